// A websocket to /ws that reconnects by itself (exponential backoff with jitter) and
// catches up without duplicates: on every (re)connect it sends the last seq it has
// seen and the calls it shows; the server replays what was missed, and any event at
// or below the last seq seen for its call is ignored here as well.

import { showConnection } from './common.js';

const FIRST_DELAY = 500, MAX_DELAY = 15000;

export class LiveSocket {
  // onEvent(event, seq) for each new event; onReady(message) after each catch-up.
  constructor({ call = null, onEvent, onReady = () => {} }) {
    this.call = call;
    this.onEvent = onEvent;
    this.onReady = onReady;
    this.lastByCall = new Map();   // call id -> last seq applied
    this.lastSeq = 0;
    this.attempt = 0;
    this.ws = null;
    this.duplicates = 0;
  }

  start() { this.connect(); return this; }

  connect() {
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const query = this.call ? `?call=${encodeURIComponent(this.call)}` : '';
    showConnection('connecting');
    const ws = this.ws = new WebSocket(`${scheme}://${location.host}/ws${query}`);
    ws.onopen = () => ws.send(JSON.stringify({ last_seq: this.lastSeq, calls: [...this.lastByCall.keys()] }));
    ws.onmessage = (message) => this.receive(JSON.parse(message.data));
    ws.onclose = (close) => this.closed(close);
  }

  receive(message) {
    if (message.type === 'ready') {
      this.attempt = 0;
      showConnection('open');
      this.onReady(message);
      return;
    }
    const { seq, event } = message;
    if (!event) return;
    const last = this.lastByCall.get(event.call_id) ?? 0;
    if (seq <= last) { this.duplicates++; return; }
    this.lastByCall.set(event.call_id, seq);
    this.lastSeq = Math.max(this.lastSeq, seq);
    this.onEvent(event, seq);
  }

  closed(close) {
    showConnection('closed');
    if (close.code === 4401 || close.code === 4403) {     // logged out / not allowed
      location.href = '/login?next=' + encodeURIComponent(location.pathname);
      return;
    }
    const delay = Math.min(MAX_DELAY, FIRST_DELAY * 2 ** this.attempt++) * (0.75 + Math.random() / 2);
    setTimeout(() => this.connect(), delay);
  }

  // Tests and the benchmark: drop the connection as a network failure would.
  drop() { this.ws?.close(4999, 'dropped by client'); }
}
