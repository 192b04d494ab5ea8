// One archived call: recording, transcript (click a line to hear it), triggers on a
// timeline (click to seek), per-trigger script adherence, forbidden phrases, review.

import { SEVERITIES, SPEAKERS, VERDICTS, agentText, callWhen, clock, dateTime, el, getJSON, labelled, spoken } from './common.js';
import { citationList, triggerWords } from './cards.js';

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

// The call is named by who called and when; the details line says the rest once each.
function meta(call) {
  const title = [call.caller || '未知号码', callWhen(call.started_at)].filter(Boolean).join(' · ');
  document.getElementById('call-title').textContent = title;
  document.title = `${title} · 坐席智能助手`;
  const parts = [labelled('坐席', agentText(call) || '—'),
    `时长 ${call.duration != null ? clock(call.duration) : '通话中'}`,
    `开始于 ${dateTime(call.started_at)}`, `编号 ${call.call_id}`];
  document.getElementById('call-meta').textContent = parts.join(' · ');
  if (call.has_recording) audio.src = `/recordings/${encodeURIComponent(call.call_id)}`;   // none: no 404
  else { audio.hidden = true; document.getElementById('no-audio').hidden = false; }
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

const labels = document.getElementById('timeline-labels');
const LABEL_ROW = 22, LABEL_GAP = 8;

function renderTimeline(cards, length) {
  const standing = cards.filter((c) => c.status !== 'withdrawn');
  const at = (card) => `${Math.min(100, (100 * card.start) / length)}%`;
  const markers = standing.map((card) => {
    const marker = el('button', {
      type: 'button', class: `marker sev-${card.severity}`, dataset: { cardId: card.card_id, start: card.start },
      title: `${clock(card.start)} ${card.title}`, 'aria-label': `${clock(card.start)} ${card.title}`,
      onclick: () => seek(card.start),
    });
    marker.style.left = at(card);
    return marker;
  });
  timeline.append(...markers);
  // each marker's category above the track, in as many rows as it takes not to overlap
  labels.replaceChildren(...standing.map((card) => el('span', {
    class: `marker-label sev-${card.severity}`, dataset: { cardId: card.card_id, start: card.start, at: at(card) },
    title: `${clock(card.start)} ${card.title}`, onclick: () => seek(card.start), text: card.title,
  })));
  layoutLabels();
  new ResizeObserver(layoutLabels).observe(labels);     // a new width: lay them out again
  document.fonts?.ready.then(layoutLabels);
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

function layoutLabels() {
  const width = labels.clientWidth;
  if (!width) return;
  const rowEnds = [];                      // per row: where its last label ends (px)
  const sorted = [...labels.children].sort((a, b) => a.dataset.start - b.dataset.start);
  for (const label of sorted) {
    const w = label.offsetWidth;
    const centre = (parseFloat(label.dataset.at) / 100) * width;
    const left = Math.max(0, Math.min(width - w, centre - w / 2));
    let row = rowEnds.findIndex((end) => end + LABEL_GAP <= left);
    if (row < 0) { row = rowEnds.length; rowEnds.push(0); }
    rowEnds[row] = left + w;
    label.style.left = `${left}px`;
    label.style.top = `${row * LABEL_ROW}px`;
  }
  labels.style.height = `${rowEnds.length * LABEL_ROW}px`;
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

// The category's key phrases: those the agent said, and those not said (neutral: not
// said is not "cancelled").
function keyPhrases(judged) {
  const said = judged.expected.filter((p) => judged.said.includes(p));
  const unsaid = judged.expected.filter((p) => !judged.said.includes(p));
  return el('div', { class: 'phrases' },
    said.length ? el('p', {}, el('span', { class: 'label', text: '已说' }),
      said.map((p) => el('span', { class: 'said', text: p }))) : null,
    unsaid.length ? el('p', {}, el('span', { class: 'label', text: '未说' }),
      unsaid.map((p) => el('span', { class: 'unsaid', text: p }))) : null);
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
      el('p', { class: 'words' }, '客户：', triggerWords(card.text, card)),
      judged ? keyPhrases(judged) : null,
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
  if (!form) return;
  // no default verdict: the form starts from the reviewer's own saved review, or empty
  const mine = reviews.find((r) => r.reviewer === root.dataset.username);
  if (mine) {
    form.verdict.value = mine.verdict;
    form.notes.value = mine.notes;
  }
  const error = document.getElementById('review-error');
  form.noValidate = true;                  // our message, not the browser's bubble
  form.addEventListener('change', () => { if (form.verdict.value) error.hidden = true; });
  form.addEventListener('submit', (event) => {
    if (form.verdict.value) return;
    event.preventDefault();
    error.textContent = '请先选择质检结论（合格、需改进或不合格），再保存。';
    error.hidden = false;
    form.querySelector('input[name="verdict"]').focus();
  });
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
