// The supervisor board: every live call with its agent, ticking duration, triggers
// and risk (the store's, refreshed from /api/live after card events); an alert with
// sound when a call turns critical; click a call for its live transcript and cards.
// The call's reading (CallReadingUpdated: complaint/customer type and escalation score
// 0-100 with its factors) fills the 通话类型 and 升级分 columns; rows are ordered by
// risk level (critical first), then escalation score, then oldest first.
// The header counts the calls in progress, which are exactly the rows listed under it;
// a call that ends moves to a separate 刚结束 group (with its real duration, from
// CallEnded) for a minute, then leaves.

import { RISKS, beep, clock, el, getJSON } from './common.js';
import { CallView, serverNow, setServerTime } from './live.js';
import { LiveSocket } from './socket.js';
import { watchHealth } from './health.js';

const RISK_ORDER = { critical: 2, warning: 1, normal: 0 };
const REFRESH_AFTER = ['CallStarted', 'AgentJoined', 'CardFired', 'CardConfirmed', 'CardWithdrawn', 'CallEnded'];

const ENDED_KEPT = 60000;       // ms an ended call stays in the 刚结束 group

const tbody = document.getElementById('live-rows');
const endedBody = document.getElementById('ended-rows');
const empty = document.getElementById('board-empty');
const count = document.getElementById('board-count');
const detail = document.getElementById('detail');
const calls = new Map();        // call id -> {events, row, cells, risk, startedAt, cards, view}
const finished = new Set();     // calls seen ending: no later event or listing brings them back
const AFTER_END = ['CallEnded', 'TranscriptRevised'];
let openedView = null;
let ready = false;

function entry(callId) {
  let call = calls.get(callId);
  if (call) return call;
  const cells = {
    risk: el('td', {}, el('span', { class: 'risk normal', text: RISKS.normal })),
    escalation: el('td', { class: 'escalation', text: '—' }),
    reading: el('td', { class: 'reading-type', text: '—' }),
    agent: el('td', { class: 'agent', text: '—' }),
    caller: el('td', { text: '' }),
    duration: el('td', { class: 'duration', text: '00:00' }),
    triggers: el('td', {}),
  };
  const row = el('tr', { dataset: { callId }, tabindex: '0', onclick: () => open(callId),
    onkeydown: (e) => { if (e.key === 'Enter') open(callId); } }, Object.values(cells));
  call = { callId, events: [], row, cells, risk: 'normal', score: 0, startedAt: null, cards: new Map(), view: null, ended: false };
  calls.set(callId, call);
  tbody.append(row);
  return call;
}

function apply(event) {
  if (!calls.has(event.call_id) && (finished.has(event.call_id) || AFTER_END.includes(event.type))) {
    // e.g. the post-call transcript of a call that has left the board
    if (openedView?.callId === event.call_id) openedView.apply(event);
    return;
  }
  const call = entry(event.call_id);
  call.events.push(event);
  call.view?.apply(event);
  switch (event.type) {
    case 'CallStarted':
      call.startedAt = event.at;
      call.cells.caller.textContent = event.caller || '未知';
      break;
    case 'AgentJoined':
      call.startedAt ??= event.at;
      if (call.cells.agent.textContent === '—') call.cells.agent.textContent = event.endpoint;
      break;
    case 'CardFired': call.cards.set(event.card.card_id, event.card); break;
    case 'CallReadingUpdated':
      setReading(call, event.reading);
      if (ready && !call.ended) sortRows();
      break;
    case 'CardWithdrawn': call.cards.delete(event.card_id); break;
    case 'CallEnded':
      // the call's own length: the board's clock ran on while the recogniser finished
      // the last words and the recording was closed, before CallEnded was published
      call.ended = true;
      finished.add(call.callId);
      call.cells.duration.textContent = clock(event.duration);
      call.row.classList.add('ended');
      endedBody.firstElementChild.after(call.row);      // most recent first, under the group's title
      if (openedView?.callId === call.callId) detail.querySelector(':scope > p.meta')?.append(...reviewLink(call.callId));
      endedBody.hidden = false;
      // replayed history (a late event of an old call brings its past): gone at once
      setTimeout(() => remove(call.callId), Math.max(0, ENDED_KEPT - 1000 * (serverNow() - event.at)));
      updateCount();
      break;
  }
  if (event.type.startsWith('Card')) renderTriggers(call);
  if (ready && REFRESH_AFTER.includes(event.type)) scheduleRefresh();
}

function renderTriggers(call) {
  const titles = new Map();
  for (const card of call.cards.values()) titles.set(card.title, card.severity);
  call.cells.triggers.replaceChildren(el('div', { class: 'chips' }, el('b', { text: String(call.cards.size) }),
    [...titles].map(([title, severity]) => el('span', { class: `chip sev-${severity}`, text: title }))));
}

function setReading(call, reading) {
  const { complaint_type: complaint, customer_type: customer, escalation } = reading;
  call.score = escalation.score;
  call.row.dataset.score = String(escalation.score);
  const factors = escalation.factors.filter((f) => f.value > 0)
    .sort((a, b) => b.value - a.value).map((f) => `${f.label} ${Math.round(f.value)}`);
  // the score and its largest factor; every factor in the tooltip
  call.cells.escalation.replaceChildren(el('b', { text: String(escalation.score) }),
    ...(factors.length ? [el('small', { text: factors[0] })] : []));
  call.cells.escalation.title = factors.join('，');
  const short = (name) => name.replace(/（.*）$/, '');
  call.cells.reading.replaceChildren(
    el('span', { text: complaint.key === 'ordinary' ? '普通投诉' : short(complaint.name) }),
    ...(customer.key === 'ordinary' ? [] : [el('small', { text: customer.name })]));
  call.cells.reading.title = [complaint.name, customer.name].join(' · ');
}

function remove(callId) {
  const call = calls.get(callId);
  if (!call || !call.ended) return;
  call.row.remove();
  calls.delete(callId);
  // an opened call stays in the detail pane (its view is already marked 已结束)
  updateCount();
}

function setRisk(call, risk, alert) {
  if (call.risk === risk) return;
  const turnedCritical = risk === 'critical' && call.risk !== 'critical';
  call.risk = risk;
  call.cells.risk.replaceChildren(el('span', { class: `risk ${risk}`, text: RISKS[risk] ?? risk }));
  call.row.dataset.risk = risk;
  if (turnedCritical && alert) {
    call.row.classList.remove('alerting');
    void call.row.offsetWidth;            // restart the flash animation
    call.row.classList.add('alerting');
    beep(3);
    document.title = `⚠ 高风险通话 · ${document.title.replace(/^⚠ 高风险通话 · /, '')}`;
  }
}

function sortRows() {
  const rows = [...calls.values()].filter((c) => !c.ended).sort((a, b) =>
    (RISK_ORDER[b.risk] - RISK_ORDER[a.risk]) || (b.score - a.score) || ((a.startedAt ?? 0) - (b.startedAt ?? 0)));
  for (const call of rows) tbody.append(call.row);
  updateCount();
}

function updateCount() {
  const live = [...calls.values()].filter((c) => !c.ended).length;
  count.textContent = `${live} 路`;
  empty.hidden = live > 0;
  endedBody.hidden = ![...calls.values()].some((c) => c.ended);
}

let refreshTimer = null;
function scheduleRefresh() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(refresh, 200);
}

async function refresh(alert = true) {
  const { calls: live, server_time: serverTime } = await getJSON('/api/live');
  setServerTime(serverTime);
  for (const summary of live) {
    // a listing taken just before a CallEnded arrived must not bring the call back
    if (finished.has(summary.call_id)) continue;
    const call = entry(summary.call_id);
    call.startedAt ??= summary.started_at;
    if (summary.caller) call.cells.caller.textContent = summary.caller;
    const name = summary.agent_name || summary.agent_username;
    call.cells.agent.replaceChildren(...(name
      ? [el('b', { text: name }), el('small', { class: 'ep', text: summary.agent_endpoint })]
      : [summary.agent_endpoint || '—']));
    setRisk(call, summary.risk, alert);
  }
  sortRows();
}

function reviewLink(callId) {
  return [' · ', el('a', { href: `/qa/call/${encodeURIComponent(callId)}`, text: '质检回放' })];
}

function open(callId) {
  const call = calls.get(callId);
  if (!call) return;
  openedView?.destroy();
  for (const other of calls.values()) other.row.classList.toggle('selected', other.callId === callId);
  for (const other of calls.values()) if (other.callId !== callId) other.view = null;
  call.view = openedView = new CallView(callId, { actions: false, sound: () => false });
  for (const event of call.events) call.view.apply(event);
  detail.replaceChildren(call.view.root, el('p', { class: 'meta' },
    el('a', { href: `/live/${encodeURIComponent(callId)}`, target: '_blank', text: '在新窗口打开' }),
    ...(call.ended ? reviewLink(callId) : [])));
}

setInterval(() => {
  for (const call of calls.values()) {
    if (call.startedAt && !call.ended) call.cells.duration.textContent = clock(serverNow() - call.startedAt);
  }
}, 1000);

const socket = new LiveSocket({
  onEvent: apply,
  async onReady(message) {
    setServerTime(message.server_time);
    await refresh(ready);                 // first load: no alert for calls already critical
    ready = true;
    document.body.dataset.ready = '1';
  },
}).start();

window.callassist = { socket, calls, refresh };

watchHealth(document.getElementById('health-banner'));
