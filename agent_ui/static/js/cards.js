// A prompt card as DOM: severity, title and (on the agent screen) its buttons; the
// words that made it fire, marked; the script as numbered steps (what to say now);
// the one or two citations that matter most (the playbook lists them most important
// first) and the rest behind a 更多依据 toggle.

import { SEVERITIES, SPEAKERS, clock, el, postJSON } from './common.js';

export const CITATIONS_SHOWN = 2;
const CONTEXT = 12;             // characters of the utterance kept on each side of the heard words
const VIA = { chars: '字面匹配', pinyin: '读音相近', intent: '语义判断' };

// What made the card fire: `heard` (the part of `text` the recogniser used: '' on cards
// stored before it existed), `phrase` (the playbook phrase; for via=intent the heard
// words) and `via` (chars | pinyin | intent).
function firedOn(card) {
  return { heard: card.heard || '', phrase: card.phrase || '', via: card.via || '' };
}

// 「…context <mark>heard</mark> context…」 plus ≈ the playbook phrase when it was heard
// differently (公信不 for 工信部). `text` may be a confirmed final transcript: heard is
// marked where it still occurs. Without `heard` the phrase is marked where it occurs.
export function triggerWords(text, fired) {
  text ??= '';
  const heard = fired.heard || '', phrase = fired.phrase || '', via = fired.via || '';
  const marked = heard || (phrase && text.includes(phrase) ? phrase : '');
  const at = marked ? text.indexOf(marked) : -1;
  const parts = [];
  if (at < 0) {
    parts.push('「', text.length > 2 * CONTEXT + 8 ? `${text.slice(0, 2 * CONTEXT + 6)}…` : text, '」');
  } else {
    const from = Math.max(0, at - CONTEXT), to = Math.min(text.length, at + marked.length + CONTEXT);
    parts.push('「', from > 0 ? '…' : '', text.slice(from, at),
      el('mark', { text: marked, title: VIA[via] ? `触发依据：${VIA[via]}` : null }),
      text.slice(at + marked.length, to), to < text.length ? '…' : '', '」');
  }
  const canonical = phrase && phrase !== marked && via !== 'intent' ? ` ≈ ${phrase}` : '';
  if (at < 0 && heard) parts.push(el('span', { class: 'canon', text: ` 听到「${heard}」${canonical}` }));
  else if (canonical) parts.push(el('span', { class: 'canon', title: '话术库中的说法', text: canonical }));
  return el('span', { class: 'words', title: text }, parts);
}

function citationItem(c) {
  return el('li', {}, el('span', { class: 'law', text: `《${c.law.replace(/^中华人民共和国/, '')}》${c.article}` }),
    el('q', { text: c.quote }));
}

// The first `shown` citations as a list, the rest behind 更多依据 (a <details>).
export function citationList(citations, shown = CITATIONS_SHOWN) {
  if (!citations?.length) return null;
  const first = citations.slice(0, shown), rest = citations.slice(shown);
  return el('div', { class: 'basis' },
    el('ul', { class: 'citations' }, first.map(citationItem)),
    rest.length ? el('details', { class: 'more-citations' },
      el('summary', { text: `更多依据（${rest.length}）` }),
      el('ul', { class: 'citations' }, rest.map(citationItem))) : null);
}

// options: {actions: bool, onAck(card), onDismiss(card)}
export function renderCard(card, options = {}) {
  const fired = firedOn(card);
  const node = el('article', {
    class: `card sev-${card.severity}`,
    dataset: { cardId: card.card_id, severity: card.severity, category: card.category,
      phrase: fired.phrase, heard: fired.heard, via: fired.via },
    'aria-label': card.title,
  },
  el('header', {},
    el('span', { class: 'sev', text: SEVERITIES[card.severity] ?? card.severity }),
    el('h3', { text: card.title }),
    el('time', { text: clock(card.start) }),
    el('span', { class: 'state' }),
    options.actions ? cardActions(card, () => node, options) : null),
  el('p', { class: 'trigger' },
    el('span', { class: 'who', text: `${SPEAKERS[card.speaker] ?? card.speaker}：` }),
    triggerWords(card.text, fired)),
  card.script?.length ? el('ol', { class: 'script' }, card.script.map((step) => el('li', { text: step }))) : null,
  citationList(card.citations));
  if (card.confirmed) node.classList.add('confirmed');
  return node;
}

function cardActions(card, nodeOf, options) {
  const feedback = (helpful) => async () => {
    await postJSON(`/api/cards/${encodeURIComponent(card.card_id)}/feedback`, { helpful });
    setHelpful(nodeOf(), helpful);
  };
  const ack = async () => {
    await postJSON(`/api/cards/${encodeURIComponent(card.card_id)}/ack`);
    setAcknowledged(nodeOf());
    options.onAck?.(card);
  };
  return el('span', { class: 'actions' },
    el('button', { type: 'button', class: 'ack', onclick: ack, text: '已处理' }),
    el('button', { type: 'button', class: 'fb yes', onclick: feedback(true), text: '有用' }),
    el('button', { type: 'button', class: 'fb no', onclick: feedback(false), text: '没用' }),
    card.severity === 'critical' ? null : el('button', {
      type: 'button', class: 'dismiss', title: '关闭', 'aria-label': '关闭', text: '×',
      onclick: () => { nodeOf().remove(); options.onDismiss?.(card); },
    }));
}

// The final transcript confirmed the card: its text replaces the partial's, with the
// heard words marked again where they still occur.
export function confirm(node, text) {
  node.classList.add('confirmed');
  if (!text) return;
  const { heard, phrase, via } = node.dataset;
  node.querySelector('.trigger .words').replaceWith(triggerWords(text, { heard, phrase, via }));
}

export function setAcknowledged(node) {
  node.classList.add('acknowledged');
  node.querySelector('.state').textContent = '已处理';
  node.querySelector('button.ack')?.setAttribute('disabled', '');
}

export function setHelpful(node, helpful) {
  node.querySelector('.fb.yes')?.classList.toggle('chosen', helpful === true);
  node.querySelector('.fb.no')?.classList.toggle('chosen', helpful === false);
}

export function withdraw(node) {
  node.classList.add('withdrawn');
  node.querySelector('.state').textContent = '已撤回';
  setTimeout(() => node.remove(), 4000);     // after the fade-out (CSS transition)
}
