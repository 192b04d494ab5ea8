// A prompt card as DOM: severity, title, the words that triggered it, the script as
// numbered steps, the legal citations, and (on the agent screen) its buttons.

import { SEVERITIES, SPEAKERS, clock, el, postJSON } from './common.js';

// The trigger text with the matched phrase marked (when it occurs literally; a
// pinyin match may have no literal occurrence).
function triggerText(card) {
  const text = card.text ?? '';
  const at = card.phrase ? text.indexOf(card.phrase) : -1;
  if (at < 0) return [text];
  return [text.slice(0, at), el('mark', { text: card.phrase }), text.slice(at + card.phrase.length)];
}

export function citationList(citations) {
  if (!citations?.length) return null;
  return el('ul', { class: 'citations' }, citations.map((c) =>
    el('li', {}, el('span', { class: 'law', text: `《${c.law.replace(/^中华人民共和国/, '')}》${c.article}` }),
      el('q', { text: c.quote }))));
}

// options: {actions: bool, onAck(card), onDismiss(card)}
export function renderCard(card, options = {}) {
  const node = el('article', {
    class: `card sev-${card.severity}`, dataset: { cardId: card.card_id, severity: card.severity, category: card.category, phrase: card.phrase },
    'aria-label': card.title,
  },
  el('header', {},
    el('span', { class: 'sev', text: SEVERITIES[card.severity] ?? card.severity }),
    el('h3', { text: card.title }),
    el('span', { class: 'state' }),
    el('time', { text: clock(card.start) })),
  el('p', { class: 'trigger' },
    el('span', { class: 'who', text: `${SPEAKERS[card.speaker] ?? card.speaker}：` }),
    el('span', { class: 'words' }, '「', ...triggerText(card), '」')),
  card.script?.length ? el('ol', { class: 'script' }, card.script.map((step) => el('li', { text: step }))) : null,
  citationList(card.citations));
  if (card.confirmed) node.classList.add('confirmed');
  if (options.actions) node.append(cardActions(card, node, options));
  return node;
}

function cardActions(card, node, options) {
  const feedback = (helpful) => async () => {
    await postJSON(`/api/cards/${encodeURIComponent(card.card_id)}/feedback`, { helpful });
    setHelpful(node, helpful);
  };
  const ack = async () => {
    await postJSON(`/api/cards/${encodeURIComponent(card.card_id)}/ack`);
    setAcknowledged(node);
    options.onAck?.(card);
  };
  return el('footer', {},
    el('button', { type: 'button', class: 'ack', onclick: ack, text: '已处理' }),
    el('button', { type: 'button', class: 'fb yes', onclick: feedback(true), text: '有用' }),
    el('button', { type: 'button', class: 'fb no', onclick: feedback(false), text: '没用' }),
    card.severity === 'critical' ? null : el('button', {
      type: 'button', class: 'dismiss', title: '关闭', 'aria-label': '关闭', text: '×',
      onclick: () => { node.remove(); options.onDismiss?.(card); },
    }));
}

// The final transcript confirmed the card (its words may be longer than the partial's).
export function confirm(node, phrase, text) {
  node.classList.add('confirmed');
  if (text) node.querySelector('.trigger .words').replaceChildren('「', ...triggerText({ phrase, text }), '」');
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
