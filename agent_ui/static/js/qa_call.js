// One archived call: recording, transcript (click a line to hear it), the conversation
// timeline (talk, silences, talk-over, agitation, sentiment, triggers; click to seek),
// per-trigger script adherence, forbidden phrases, technique adherence, review.

import { SEVERITIES, SPEAKERS, VERDICTS, agentText, callWhen, clock, dateTime, el, getJSON, labelled, spoken } from './common.js';
import { citationList, triggerWords } from './cards.js';

const root = document.getElementById('qa-call');
const callId = root.dataset.callId;
const audio = document.getElementById('audio');
const timeline = document.getElementById('timeline');
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

// The conversation timeline (inline SVG, drawn again at each width): the triggers as
// markers, each speaker's talk on a lane (final transcript lines), silences and
// talk-over across both lanes, then the agitation of each leg (0..1) and the
// customer's sentiment (-1..1) when the call's analytics have them. A click anywhere
// seeks the recording to that moment; a marker seeks to its trigger.
const SVG = 'http://www.w3.org/2000/svg';
// the lane names' column left of the plot: the stylesheet's, so the labels and axis align
const GUTTER = parseFloat(getComputedStyle(timeline.parentElement).getPropertyValue('--gutter'));
const ROWS = { marker: [2, 22], customer: [32, 16], agent: [52, 16], curve: 46, gap: 10 };
const LEGS = ['customer', 'agent'];

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null) continue;
    if (key === 'text') node.textContent = value;
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else node.setAttribute(key, value);
  }
  node.append(...children.flat().filter(Boolean));
  return node;
}

const seconds = (s) => `${Math.round(s)} 秒`;
const span = (a, b) => `${clock(a)}–${clock(b)}`;
const present = (list) => Array.isArray(list) && list.length > 0;

function agitationOf(stats) {
  return LEGS.filter((leg) => present(stats?.legs?.[leg]?.agitation));
}

function renderTimeline(call, stats, length) {
  const standing = call.cards.filter((c) => c.status !== 'withdrawn');
  const agitated = agitationOf(stats);
  const sentiment = present(stats?.sentiment) ? stats.sentiment : null;
  let height = ROWS.agent[0] + ROWS.agent[1] + 4;
  const curveRows = [];
  if (agitated.length) { curveRows.push(['agitation', height + ROWS.gap]); height += ROWS.gap + ROWS.curve; }
  if (sentiment) { curveRows.push(['sentiment', height + ROWS.gap]); height += ROWS.gap + ROWS.curve; }
  height += 4;
  const playhead = svg('line', { class: 'playhead', y1: 0, y2: height });
  let plot = 1;
  const x = (t) => GUTTER + (Math.max(0, Math.min(length, t)) / length) * plot;

  function draw() {
    const width = timeline.clientWidth;
    if (!width) return;
    plot = Math.max(1, width - GUTTER);
    const root = svg('svg', { width, height, viewBox: `0 0 ${width} ${height}`, class: 'conversation-svg' });
    const lane = (name, [top, h], text) => svg('g', { class: `lane ${name}` },
      svg('rect', { x: GUTTER, y: top, width: plot, height: h, class: 'lane-bg' }),
      svg('text', { x: GUTTER - 6, y: top + h / 2 + 4, 'text-anchor': 'end', text }));
    root.append(lane('customer', ROWS.customer, '客户'), lane('agent', ROWS.agent, '坐席'));
    const talkTop = ROWS.customer[0], talkBottom = ROWS.agent[0] + ROWS.agent[1];

    // silences under the talk, talk-over on top of it
    for (const s of stats?.silences ?? []) {
      root.append(svg('rect', { class: 'silence', x: x(s.start), y: talkTop, width: Math.max(1, x(s.end) - x(s.start)),
        height: talkBottom - talkTop, dataset: { start: s.start, end: s.end } },
      svg('title', { text: `静默 ${span(s.start, s.end)}（${seconds(s.end - s.start)}）` })));
    }
    for (const u of call.utterances) {
      const [top, h] = ROWS[u.speaker] ?? ROWS.customer;
      root.append(svg('rect', { class: `talk ${u.speaker}`, x: x(u.start), y: top + 2, width: Math.max(2, x(u.end) - x(u.start)),
        height: h - 4, rx: 2, dataset: { start: u.start, end: u.end } },
      svg('title', { text: `${SPEAKERS[u.speaker] ?? u.speaker} ${clock(u.start)}：${spoken(u.text)}` })));
    }
    for (const o of stats?.talk_over ?? []) {
      const who = o.by === 'agent' ? '坐席打断客户' : '客户打断坐席';
      root.append(svg('rect', { class: `overlap by-${o.by}`, x: x(o.start), y: talkTop - 2, width: Math.max(3, x(o.end) - x(o.start)),
        height: talkBottom - talkTop + 4, dataset: { start: o.start, end: o.end, by: o.by } },
      svg('title', { text: `抢话 ${span(o.start, o.end)}：${who}` })));
    }
    for (const [kind, top] of curveRows) {
      const h = ROWS.curve;
      const group = svg('g', { class: `curves ${kind}` },
        svg('rect', { x: GUTTER, y: top, width: plot, height: h, class: 'lane-bg' }),
        svg('text', { x: GUTTER - 6, y: top + h / 2 + 4, 'text-anchor': 'end', text: kind === 'agitation' ? '激动度' : '情绪' }));
      if (kind === 'agitation') {
        for (const leg of agitated) {
          group.append(curve(stats.legs[leg].agitation, (v) => top + h - v * h, `agitation ${leg}`,
            (p) => `${SPEAKERS[leg]}激动度 ${clock(p.t)}：${Math.round(p.value * 100)}%`));
        }
      } else {
        group.append(svg('line', { class: 'zero', x1: GUTTER, x2: GUTTER + plot, y1: top + h / 2, y2: top + h / 2 }),
          curve(sentiment, (v) => top + h / 2 - (v * h) / 2, 'sentiment',
            (p) => `客户情绪 ${clock(p.t)}：${p.value > 0.15 ? '正面' : p.value < -0.15 ? '负面' : '中性'}（${p.value.toFixed(2)}）`));
      }
      root.append(group);
    }
    for (const card of standing) {
      const [top, h] = ROWS.marker;
      root.append(svg('rect', { class: `marker sev-${card.severity}`, x: x(card.start) - 6, y: top, width: 12, height: h, rx: 3,
        tabindex: '0', role: 'button', 'aria-label': `${clock(card.start)} ${card.title}`,
        dataset: { cardId: card.card_id, start: card.start } },
      svg('title', { text: `${clock(card.start)} ${card.title}` })));
    }
    root.append(playhead);
    movePlayhead();
    timeline.replaceChildren(root);
  }

  // a curve: one path through the points, and each point with its value on hover
  function curve(points, y, kind, tip) {
    const sorted = [...points].sort((a, b) => a.t - b.t);
    const d = sorted.map((p, i) => `${i ? 'L' : 'M'}${x(p.t).toFixed(1)},${y(p.value).toFixed(1)}`).join('');
    return svg('g', { class: `curve ${kind}` }, svg('path', { d, class: 'line' }),
      sorted.map((p) => svg('circle', { cx: x(p.t), cy: y(p.value), r: 2.5, class: 'point', dataset: { t: p.t, value: p.value } },
        svg('title', { text: tip(p) }))));
  }

  function movePlayhead() {
    const at = x(audio.currentTime || 0);
    playhead.setAttribute('x1', at);
    playhead.setAttribute('x2', at);
  }

  draw();
  new ResizeObserver(draw).observe(timeline);
  timeline.addEventListener('click', (event) => {
    const marker = event.target.closest('.marker');
    if (marker) { seek(Number(marker.dataset.start)); return; }
    const box = timeline.getBoundingClientRect();
    seek(Math.max(0, Math.min(1, (event.clientX - box.left - GUTTER) / plot)) * length);
  });
  timeline.addEventListener('keydown', (event) => {
    const marker = event.target.closest?.('.marker');
    if (marker && (event.key === 'Enter' || event.key === ' ')) { event.preventDefault(); seek(Number(marker.dataset.start)); }
  });
  // the playhead follows playback (every frame while playing; timeupdate comes 4 times a second)
  const follow = () => { movePlayhead(); if (!audio.paused) requestAnimationFrame(follow); };
  audio.addEventListener('play', () => requestAnimationFrame(follow));
  audio.addEventListener('seeked', movePlayhead);
  audio.addEventListener('timeupdate', () => { movePlayhead(); highlight(audio.currentTime); });

  // each marker's category above the track, in as many rows as it takes not to overlap
  const at = (card) => `${Math.min(100, (100 * card.start) / length)}%`;
  labels.replaceChildren(...standing.map((card) => el('span', {
    class: `marker-label sev-${card.severity}`, dataset: { cardId: card.card_id, start: card.start, at: at(card) },
    title: `${clock(card.start)} ${card.title}`, onclick: () => seek(card.start), text: card.title,
  })));
  layoutLabels();
  new ResizeObserver(layoutLabels).observe(labels);     // a new width: lay them out again
  document.fonts?.ready.then(layoutLabels);
  document.getElementById('axis-mid').textContent = clock(length / 2);
  document.getElementById('axis-end').textContent = clock(length);
  renderLegend(call, stats, agitated, sentiment);
}

function renderLegend(call, stats, agitated, sentiment) {
  const item = (cls, text) => el('li', {}, el('i', { class: cls }), text);
  document.getElementById('timeline-legend').replaceChildren(...[
    item('talk customer', '客户说话'), item('talk agent', '坐席说话'),
    stats?.silences ? item('silence', `静默（${stats.silences.length}）`) : null,
    stats?.talk_over ? item('overlap', `抢话（${stats.talk_over.length}）`) : null,
    ...agitated.map((leg) => item(`agitation ${leg}`, `${SPEAKERS[leg]}激动度`)),
    sentiment ? item('sentiment', '客户情绪') : null,
    item('marker', '触发')].filter(Boolean));
  const line = document.getElementById('conversation-stats');
  const legs = LEGS.map((leg) => [leg, stats?.legs?.[leg]]).filter(([, s]) => s);
  if (!legs.length) return;
  const number = (v, unit, digits = 0) => (v == null ? null : `${v.toFixed(digits)} ${unit}`);
  line.replaceChildren(...legs.map(([leg, s]) => el('span', { class: `leg-stats ${leg}`, dataset: { leg } },
    el('b', { text: SPEAKERS[leg] }),
    [s.talk_seconds != null ? `说话 ${clock(s.talk_seconds)}${s.talk_share != null ? `（${Math.round(s.talk_share * 100)}%）` : ''}` : null,
      number(s.speaking_rate, '字/分'), number(s.loudness_db, 'dBFS', 1), number(s.pitch_hz, 'Hz')]
      .filter(Boolean).join(' · '))));
  line.hidden = false;
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

// Technique adherence (agent_ui.adherence `techniques`): each technique the seeds teach,
// whether the agent used it, and the turns that show it (click: hear them).
const TECHNIQUE_VERDICTS = { true: ['ok', '✓ 做到'], false: ['miss', '✗ 未做到'], null: ['none', '— 不适用'] };

function renderTechniques(techniques) {
  const section = document.getElementById('techniques');
  if (!present(techniques)) { section.hidden = true; return; }
  document.getElementById('technique-list').replaceChildren(...techniques.map((t) => {
    const [cls, text] = TECHNIQUE_VERDICTS[t.passed ?? null] ?? TECHNIQUE_VERDICTS.null;
    return el('li', { class: `technique ${cls}`, dataset: { key: t.key } },
      el('span', { class: `adh ${cls}`, text }), el('b', { text: t.name }),
      t.note ? el('p', { class: 'note', text: t.note }) : null,
      present(t.evidence) ? el('ul', { class: 'evidence' }, t.evidence.map((e) => el('li', {},
        el('button', { type: 'button', class: 'seek', onclick: () => seek(e.start), text: clock(e.start) }),
        `「${spoken(e.text)}」`))) : null);
  }));
  section.hidden = false;
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

// The call's conversation analytics ({stats, reading}), or null when there are none
// (an older call, or a server without the analytics endpoint).
async function analytics() {
  const response = await fetch(`/api/calls/${encodeURIComponent(callId)}/analytics`,
    { headers: { Accept: 'application/json' }, credentials: 'same-origin' });
  return response.ok ? response.json() : null;
}

async function main() {
  const [call, extra] = await Promise.all([getJSON(`/api/calls/${encodeURIComponent(callId)}`), analytics()]);
  const stats = extra?.stats ?? null;
  meta(call);
  renderTranscript(call.utterances);
  const lastEnd = Math.max(1, ...call.utterances.map((u) => u.end), ...call.cards.map((c) => c.end));
  renderTimeline(call, stats, call.duration || stats?.duration || lastEnd);
  renderTriggers(call);
  renderTechniques(call.adherence.techniques);
  renderReview(call);
  root.dataset.ready = String(Math.round(performance.now()));   // ms since navigation (benchmark)
  document.body.dataset.ready = '1';
}

main();
window.callassist = { seek };
