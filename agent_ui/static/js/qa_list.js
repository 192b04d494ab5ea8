// The call archive: filters (kept in the address bar), full-text search of the
// transcripts, paging.

import { RISKS, SEVERITIES, clock, dateTime, el, getJSON, spoken } from './common.js';

const form = document.getElementById('filters');
const tbody = document.querySelector('#results tbody');
const summary = document.getElementById('summary');
const prev = document.getElementById('prev');
const next = document.getElementById('next');
const PAGE = 50;
let offset = Number(new URLSearchParams(location.search).get('offset') || 0);
let titles = {};

async function loadVocabulary() {
  const meta = await getJSON('/api/meta');
  titles = Object.fromEntries(meta.categories.map((c) => [c.id, c.title]));
  form.category.append(...meta.categories.map((c) => el('option', { value: c.id, text: c.title })));
  form.agent.append(...meta.agents.map((a) =>
    el('option', { value: a.username, text: `${a.display_name}（${a.endpoints.join('、') || a.username}）` })));
  const query = new URLSearchParams(location.search);
  for (const name of ['from', 'to', 'agent', 'category', 'severity', 'q']) {
    if (query.has(name)) form[name].value = query.get(name);
  }
}

function filters() {
  const query = new URLSearchParams();
  for (const [name, value] of new FormData(form)) if (value) query.set(name, value);
  return query;
}

function row(call) {
  const link = el('a', { href: `/qa/call/${encodeURIComponent(call.call_id)}`, text: dateTime(call.started_at) });
  const chips = call.categories.map((id) => el('span', { class: 'chip', text: titles[id] ?? id }));
  const sev = call.max_severity ? el('span', { class: `chip sev-${call.max_severity}`, text: SEVERITIES[call.max_severity] }) : null;
  const main = el('tr', { dataset: { callId: call.call_id } },
    el('td', {}, link),
    el('td', { text: call.agent_name || call.agent_username || call.agent_endpoint || '—' }),
    el('td', { text: call.caller || '—' }),
    el('td', { text: call.duration != null ? clock(call.duration) : '—' }),
    el('td', {}, el('div', { class: 'chips' }, sev, chips)),
    el('td', {}, el('span', { class: `risk ${call.risk}`, text: call.status === 'live' ? '通话中' : RISKS[call.risk] })));
  if (!call.snippets?.length) return [main];
  return [main, el('tr', { class: 'snippets' }, el('td', { colspan: 6 },
    call.snippets.map((s) => el('p', {}, el('time', { text: clock(s.start) }), ` ${s.speaker === 'agent' ? '坐席' : '客户'}：${spoken(s.text)}`))))];
}

async function search() {
  const query = filters();
  if (offset) query.set('offset', offset);
  history.replaceState(null, '', query.size ? `?${query}` : location.pathname);
  query.set('limit', PAGE);
  summary.textContent = '查询中…';
  const result = await getJSON(`/api/calls?${query}`);
  tbody.replaceChildren(...result.calls.flatMap(row));
  summary.textContent = result.total
    ? `共 ${result.total} 通，显示第 ${offset + 1}–${offset + result.calls.length} 通` : '没有符合条件的通话。';
  prev.disabled = offset === 0;
  next.disabled = offset + result.calls.length >= result.total;
  document.body.dataset.ready = '1';
}

form.addEventListener('submit', (event) => { event.preventDefault(); offset = 0; search(); });
prev.addEventListener('click', () => { offset = Math.max(0, offset - PAGE); search(); });
next.addEventListener('click', () => { offset += PAGE; search(); });

loadVocabulary().then(search);
