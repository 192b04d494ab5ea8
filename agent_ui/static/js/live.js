// One live call on screen: header (caller, agent, ticking duration), the transcript
// of both legs (interim text greyed until final) and its prompt cards, kept up to
// date by applying the call's events in order.

import { SPEAKERS, beep, clock, el, spoken } from './common.js';
import { confirm, renderCard, setAcknowledged, setHelpful, withdraw } from './cards.js';

let serverOffset = 0;       // server clock minus ours, from the socket's "ready"
export function setServerTime(serverTime) { serverOffset = serverTime - Date.now() / 1000; }
export function serverNow() { return Date.now() / 1000 + serverOffset; }

export class CallView {
  // options: {actions: bool (agent buttons), sound: () => bool (beep on critical now?)}
  constructor(callId, options = {}) {
    this.callId = callId;
    this.options = options;
    this.startedAt = null;
    this.ended = false;
    this.lines = new Map();       // "speaker:utterance" -> <li>
    this.cards = new Map();       // card id -> <article>
    this.title = el('h2', {}, el('span', { class: 'caller', text: '来电' }));
    this.agentLabel = el('span', { class: 'agent-ep' });
    this.duration = el('span', { class: 'duration', text: '00:00' });
    this.status = el('span', { class: 'status live', text: '通话中' });
    this.faults = el('p', { class: 'faults', hidden: true });
    this.transcript = el('ol', { class: 'transcript live-transcript', 'aria-live': 'polite' });
    this.cardList = el('div', { class: 'card-list', 'aria-live': 'assertive' });
    this.noCards = el('p', { class: 'idle small', text: '暂无提示。' });
    this.root = el('section', { class: 'call', dataset: { callId } },
      el('header', { class: 'call-head' }, this.title, this.agentLabel, this.status, this.duration),
      this.faults,
      el('div', { class: 'call-body' },
        el('div', { class: 'transcript-pane' }, el('h3', { text: '实时转写' }), this.transcript),
        el('div', { class: 'cards-pane' }, el('h3', { text: '提示卡' }), this.noCards, this.cardList)));
    this.timer = setInterval(() => this.tick(), 1000);
  }

  tick() {
    if (this.startedAt && !this.ended) this.duration.textContent = clock(serverNow() - this.startedAt);
  }

  apply(event) {
    switch (event.type) {
      case 'CallStarted':
        this.startedAt = event.at;
        this.title.firstChild.textContent = event.caller ? `来电 ${event.caller}` : '来电';
        this.tick();
        break;
      case 'AgentJoined':
        this.startedAt ??= event.at;
        this.agentLabel.textContent = `坐席 ${event.endpoint}`;
        break;
      case 'TranscriptUpdate': this.line(event); break;
      case 'CardFired': this.card(event.card); break;
      case 'CardConfirmed': {
        const node = this.cards.get(event.card_id);
        if (node) confirm(node, event.text);
        break;
      }
      case 'CardWithdrawn': {
        const node = this.cards.get(event.card_id);
        if (node) { this.cards.delete(event.card_id); withdraw(node); }
        break;
      }
      case 'CallEnded':
        this.ended = true;
        this.duration.textContent = clock(event.duration);
        this.status.textContent = '已结束';
        this.status.className = 'status ended';
        this.root.classList.add('ended');
        clearInterval(this.timer);
        break;
      case 'CallFault':
        this.faults.hidden = false;
        this.faults.textContent = `故障：${event.problem}`;
        break;
    }
  }

  line(update) {
    const key = `${update.speaker}:${update.utterance}`;
    let node = this.lines.get(key);
    const pane = this.transcript.parentElement;
    const atBottom = !pane || pane.scrollHeight - pane.scrollTop - pane.clientHeight < 40;
    if (!node) {
      node = el('li', { class: `line ${update.speaker}`, dataset: { start: update.start } },
        el('span', { class: 'who', text: SPEAKERS[update.speaker] ?? update.speaker }),
        el('span', { class: 'text' }));
      this.lines.set(key, node);
      // keep chronological order across the two legs
      let after = this.transcript.lastElementChild;
      while (after && Number(after.dataset.start) > update.start) after = after.previousElementSibling;
      if (after) after.after(node); else this.transcript.prepend(node);
    }
    node.querySelector('.text').textContent = spoken(update.text);
    node.classList.toggle('partial', !update.final);
    if (update.final && !update.text) { node.remove(); this.lines.delete(key); }
    if (atBottom && pane) pane.scrollTop = pane.scrollHeight;
  }

  card(card) {
    const known = this.cards.get(card.card_id);
    if (known) {                       // re-fired with confirmed: true
      if (card.confirmed) confirm(known, card.text);
      return;
    }
    const node = renderCard(card, { actions: this.options.actions });
    this.cards.set(card.card_id, node);
    this.cardList.prepend(node);
    this.noCards.hidden = true;
    node.classList.add('arrived');
    if (card.severity === 'critical' && this.options.sound?.()) beep();
  }

  // Acknowledgement / feedback state from the socket's "ready" message.
  cardState(states) {
    for (const [cardId, state] of Object.entries(states)) {
      const node = this.cards.get(cardId);
      if (!node) continue;
      if (state.acknowledged) setAcknowledged(node);
      if (state.helpful !== null && state.helpful !== undefined) setHelpful(node, state.helpful);
    }
  }

  standingCards() {
    return [...this.cards.values()].filter((node) => !node.classList.contains('withdrawn'));
  }

  destroy() { clearInterval(this.timer); this.root.remove(); }
}
