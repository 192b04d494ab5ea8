// One archived call: recording, transcript (click a line to hear it), triggers on a
// timeline (click to seek), per-trigger script adherence, forbidden phrases, review.

import { SEVERITIES, SPEAKERS, VERDICTS, clock, dateTime, el, getJSON, spoken } from './common.js';
import { citationList } from './cards.js';

const root = document.getElementById('qa-call');
const callId = root.dataset.callId;
const audio = document.getElementById('audio');
const timeline = document.getElementById('timeline');
const playhead = document.getElementById('playhead');
const transcript = document.getElementById('transcript');

function seek(seconds) {
  audio.currentTime = seconds;
  audio.play().catch(() => {});         // autoplay may be refused before any click: seeking still works
}

function meta(call) {
  const parts = [dateTime(call.started_at), `坐席 ${call.agent_name || call.agent_username || call.agent_endpoint || '—'}`,
    `主叫 ${call.caller || '未知'}`, `时长 ${call.duration != null ? clock(call.duration) : '通话中'}`];
  document.getElementById('call-meta').textContent = parts.join(' · ');
  if (!call.has_recording) { audio.hidden = true; document.getElementById('no-audio').hidden = false; }
}

function renderTranscript(utterances) {
  const fragment = document.createDocumentFragment();
  for (const u of utterances) {
    fragment.append(el('li', { class: `line ${u.speaker}`, dataset: { start: u.start, end: u.end },
      tabindex: '0', title: '点击从这里播放' },
    el('time', { text: clock(u.start) }),
    el('span', { class: 'who', text: SPEAKERS[u.speaker] ?? u.speaker }),
    el('span', { class: 'text', text: spoken(u.text) })));
  }
  transcript.replaceChildren(fragment);
  transcript.addEventListener('click', (event) => {
    const line = event.target.closest('li.line');
    if (line) seek(Number(line.dataset.start));
  });
}

function renderTimeline(cards, length) {
  const markers = cards.filter((c) => c.status !== 'withdrawn').map((card) => {
    const marker = el('button', {
      type: 'button', class: `marker sev-${card.severity}`, dataset: { cardId: card.card_id, start: card.start },
      title: `${clock(card.start)} ${card.title}`, 'aria-label': `${clock(card.start)} ${card.title}`,
      onclick: () => seek(card.start),
    });
    marker.style.left = `${Math.min(100, (100 * card.start) / length)}%`;
    return marker;
  });
  timeline.append(...markers);
  document.getElementById('axis-mid').textContent = clock(length / 2);
  document.getElementById('axis-end').textContent = clock(length);
  timeline.addEventListener('click', (event) => {
    if (event.target !== timeline) return;
    const box = timeline.getBoundingClientRect();
    seek(((event.clientX - box.left) / box.width) * length);
  });
  audio.addEventListener('timeupdate', () => {
    playhead.style.left = `${Math.min(100, (100 * audio.currentTime) / length)}%`;
    highlight(audio.currentTime);
  });
}

let current = null;
function highlight(time) {
  let best = null;
  for (const line of transcript.children) {
    if (Number(line.dataset.start) <= time) best = line; else break;
  }
  if (best === current) return;
  current?.classList.remove('playing');
  best?.classList.add('playing');
  current = best;
}

function renderTriggers(call) {
  const adherence = new Map(call.adherence.cards.map((c) => [c.card_id, c]));
  const list = document.getElementById('triggers');
  list.replaceChildren(...call.cards.filter((c) => c.status !== 'withdrawn' && c.speaker !== 'agent').map((card) => {
    const judged = adherence.get(card.card_id);
    const verdict = !judged ? el('span', { class: 'adh none', text: '不评分' })
      : judged.followed ? el('span', { class: 'adh ok', text: '✓ 已按话术' }) : el('span', { class: 'adh miss', text: '✗ 未按话术' });
    return el('li', { class: `trigger-item sev-${card.severity}`, dataset: { cardId: card.card_id } },
      el('button', { type: 'button', class: 'seek', onclick: () => seek(card.start), text: clock(card.start) }),
      el('span', { class: 'sev', text: SEVERITIES[card.severity] }),
      el('b', { text: card.title }), verdict,
      el('p', { class: 'words', text: `客户：「${card.text}」` }),
      judged ? el('p', { class: 'phrases' }, '应说：', judged.expected.map((p) =>
        el('span', { class: judged.said.includes(p) ? 'said' : 'unsaid', text: p }))) : null,
      el('details', {}, el('summary', { text: '话术与依据' }),
        el('ol', { class: 'script' }, card.script.map((s) => el('li', { text: s }))), citationList(card.citations)));
  }));
  const violations = call.adherence.violations;
  document.getElementById('violations').replaceChildren(violations.length ? el('div', { class: 'violations' },
    el('h3', { text: `坐席违规用语（${violations.length}）` }),
    el('ul', {}, violations.map((v) => el('li', {},
      el('button', { type: 'button', class: 'seek', onclick: () => seek(v.start), text: clock(v.start) }),
      el('b', { text: v.title }), `「${v.text}」`, v.corrected ? el('span', { class: 'adh ok', text: '已纠正' }) : null))))
    : el('p', { class: 'meta', text: '未发现坐席违规用语。' }));
  const score = call.adherence.score;
  const badge = document.getElementById('score');
  badge.textContent = score == null ? '无需评分' : `${score} 分`;
  badge.dataset.level = score == null ? 'none' : score >= 80 ? 'good' : score >= 60 ? 'fair' : 'poor';
}

function renderReview(call) {
  const reviews = call.reviews ?? [];
  document.getElementById('review-current').replaceChildren(...(reviews.length ? reviews.map((r) =>
    el('span', { class: 'review-line' }, el('b', { text: VERDICTS[r.verdict] ?? r.verdict }),
      ` ${r.reviewer} · ${dateTime(r.updated_at)}${r.notes ? ` · ${r.notes}` : ''}`)) : ['尚未质检。']));
  const form = document.querySelector('#review form');
  if (call.review && form) {
    form.verdict.value = call.review.verdict;
    form.notes.value = call.review.notes;
  }
}

async function main() {
  const call = await getJSON(`/api/calls/${encodeURIComponent(callId)}`);
  meta(call);
  renderTranscript(call.utterances);
  const lastEnd = Math.max(1, ...call.utterances.map((u) => u.end), ...call.cards.map((c) => c.end));
  renderTimeline(call.cards, call.duration || lastEnd);
  renderTriggers(call);
  renderReview(call);
  root.dataset.ready = String(Math.round(performance.now()));   // ms since navigation (benchmark)
  document.body.dataset.ready = '1';
}

main();
window.callassist = { seek };
