// The agent screen (/agent: the agent's live calls, with card buttons) and the
// read-only view of one call (/live/{id}).

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

const socket = new LiveSocket({
  call: focus,
  onEvent(event) {
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
