// The agent screen (/agent: the agent's live calls, with card buttons) and the
// read-only view of one call (/live/{id}). Above each call's transcript, once the call
// has been read as a whole (CallReadingUpdated), a quiet one-line header: the complaint
// and customer type with confidence, the recommended technique and its first line to
// say, and the evidence folded away. It updates in place, never beeps, never moves.

import { el, spoken } from './common.js';
import { CallView, setServerTime } from './live.js';
import { LiveSocket } from './socket.js';
import { watchHealth } from './health.js';

const MAX_ENDED_SHOWN = 1;      // an ended call stays on screen until the next one ends

const screen = document.getElementById('agent');
const focus = screen.dataset.callId || null;
const list = document.getElementById('calls');
const idle = document.getElementById('idle');
const views = new Map();
let live = false;               // after the first catch-up: new critical cards beep

function view(callId) {
  let callView = views.get(callId);
  if (!callView) {
    callView = new CallView(callId, { actions: !focus, sound: () => live });
    views.set(callId, callView);
    list.prepend(callView.root);
    idle.hidden = true;
  }
  return callView;
}

function pruneEnded() {
  const ended = [...views.values()].filter((v) => v.ended);
  for (const old of ended.slice(0, Math.max(0, ended.length - MAX_ENDED_SHOWN)).reverse()) {
    old.destroy();
    views.delete(old.callId);
  }
}

function percent(confidence) {
  return `${Math.round(100 * (confidence ?? 0))}%`;
}

function typeLabel(type, ordinaryName) {
  return type.key === 'ordinary' ? ordinaryName : type.name;
}

function evidenceList(reading) {
  const seen = new Set();
  const items = [];
  for (const type of [reading.complaint_type, reading.customer_type]) {
    for (const item of type.evidence ?? []) {
      const key = `${item.speaker}:${item.utterance}`;
      if (seen.has(key)) continue;
      seen.add(key);
      items.push(el('li', {}, el('q', { text: spoken(item.text) }), el('small', { text: ` ${item.why}` })));
    }
  }
  return items;
}

// The reading's header on the call's view (only on a view already shown: a reading
// never brings back a call that has left the screen).
function showReading(event) {
  const callView = views.get(event.call_id);
  if (!callView) return;
  const reading = event.reading;
  let head = callView.root.querySelector(':scope > .reading-head');
  if (!head) {
    head = el('section', { class: 'reading-head', 'aria-label': '通话研判' });
    callView.root.querySelector(':scope > .call-head').after(head);
  }
  const complaint = reading.complaint_type, customer = reading.customer_type;
  const technique = reading.technique;
  const evidence = evidenceList(reading);
  head.dataset.complaint = complaint.key;
  head.dataset.customer = customer.key;
  head.dataset.technique = technique.key;
  head.replaceChildren(...[
    el('span', { class: 'reading-type' },
      el('b', { class: 'complaint', text: typeLabel(complaint, '普通投诉') }),
      el('small', { class: 'confidence', text: ` 把握 ${percent(complaint.confidence)}` }),
      customer.key === 'ordinary' ? null : [' · ', el('b', { class: 'customer', text: customer.name }),
        el('small', { class: 'confidence', text: ` ${percent(customer.confidence)}` })]),
    el('span', { class: 'reading-technique' }, '建议：', el('b', { text: technique.name }),
      technique.script?.length ? el('span', { class: 'first-line', text: `“${technique.script[0]}”` }) : null),
    evidence.length ? el('details', { class: 'reading-evidence' },
      el('summary', { text: `依据 ${evidence.length} 句` }), el('ol', {}, evidence)) : null,
  ].filter(Boolean));
}

const socket = new LiveSocket({
  call: focus,
  onEvent(event) {
    if (event.type === 'CallReadingUpdated') { showReading(event); return; }
    view(event.call_id).apply(event);
    if (event.type === 'CallEnded') pruneEnded();
  },
  onReady(message) {
    setServerTime(message.server_time);
    for (const callView of views.values()) callView.cardState(message.cards);
    if (!views.size) idle.textContent = focus ? '该通话暂无内容。' : idle.textContent;
    live = true;
    document.body.dataset.ready = '1';
  },
}).start();

window.callassist = { socket, views };      // for tests and the benchmark

// a quiet line above the calls when assist is degraded or cut off from Asterisk
const healthNotice = document.createElement('p');
healthNotice.className = 'health-notice';
healthNotice.setAttribute('role', 'status');
healthNotice.hidden = true;
screen.prepend(healthNotice);
watchHealth(healthNotice);
