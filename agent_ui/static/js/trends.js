// Trends per agent or per category over days or weeks (GET /api/trends): one chart
// (calls as stacked bars, every other measure as lines, one per group), the totals per
// group and the chosen measure per group and period in tables, CSV export with the same
// query. Inline SVG, no chart library (the product runs on a closed network).

import { el } from './common.js';

const SVG = 'http://www.w3.org/2000/svg';
const form = document.getElementById('trend-filters');
const chart = document.getElementById('chart');
const legend = document.getElementById('legend');
const errorLine = document.getElementById('trend-error');
const exportLink = document.getElementById('export-csv');

const percent = (v) => `${(v * 100).toFixed(1)}%`;
const fixed = (digits) => (v) => v.toFixed(digits);
// key: [label, format, axis maximum (null: from the data)]
const METRICS = {
  calls: ['通话数', String, null],
  cards_per_call: ['每通触发数', fixed(2), null],
  critical_share: ['高风险占比', percent, 1],
  escalated_share: ['扬言升级占比', percent, 1],
  adherence: ['平均话术分', fixed(1), 100],
  adherence_calls: ['评分通话数', String, null],
  escalation: ['平均升级风险分', fixed(1), 100],
  escalation_calls: ['有升级评分通话数', String, null],
};
const CHARTED = ['calls', 'cards_per_call', 'critical_share', 'escalated_share', 'adherence', 'escalation'];
const COLOURS = ['#1d4f91', '#c62828', '#2e7d32', '#b26a00', '#6a1b9a', '#00838f', '#ad1457', '#5d4037'];
const OTHERS = '其他', OTHERS_COLOUR = '#9aa5b1';
const MAX_SERIES = COLOURS.length;
const HEIGHT = 300, PAD = { left: 52, right: 16, top: 14, bottom: 40 };

let result = null;
let asking = 0;                          // queries asked for: only the latest one draws

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null) continue;
    if (key === 'text') node.textContent = value;
    else if (key === 'dataset') for (const [k, v] of Object.entries(value)) node.dataset[k] = v;
    else node.setAttribute(key, value);
  }
  node.append(...children.flat().filter(Boolean));
  return node;
}

const show = (metric, value) => (value === null || value === undefined ? '—' : METRICS[metric][1](value));

// "2025-11-24" -> "11月24日" (a day) or "11月24日起" (the week starting then)
function periodLabel(key, period) {
  const [, m, d] = key.split('-').map(Number);
  return `${m}月${d}日${period === 'week' ? '起' : ''}`;
}

function isoDay(date) {
  const mm = String(date.getMonth() + 1).padStart(2, '0'), dd = String(date.getDate()).padStart(2, '0');
  return `${date.getFullYear()}-${mm}-${dd}`;
}

const TICKS = 4;

// The axis maximum: TICKS steps of a round size (whole steps for counts) covering `value`.
function niceMax(value, whole) {
  const raw = Math.max(value, whole ? TICKS : 1e-9) / TICKS;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= raw && (!whole || Number.isInteger(s)));
  return step * TICKS;
}

// The groups drawn as their own series: the busiest ones; by calls the rest are one bar.
function series(groups, metric) {
  if (groups.length <= MAX_SERIES) return { shown: groups, rest: [] };
  const keep = metric === 'calls' ? MAX_SERIES - 1 : MAX_SERIES;
  return { shown: groups.slice(0, keep), rest: groups.slice(keep) };
}

function drawChart() {
  const metric = form.metric.value;
  const [label, format, fixedMax] = METRICS[metric];
  document.getElementById('chart-title').textContent =
    `${label}（按${result.by === 'agent' ? '坐席' : '类别'}，按${result.period === 'week' ? '周' : '日'}）`;
  const width = Math.max(320, chart.clientWidth);
  const plotW = width - PAD.left - PAD.right, plotH = HEIGHT - PAD.top - PAD.bottom;
  const periods = result.periods;
  const slot = plotW / Math.max(1, periods.length);
  const xMid = (i) => PAD.left + slot * (i + 0.5);
  const value = new Map(result.cells.map((c) => [`${c.group}\u0000${c.period}`, c]));
  const cell = (group, period) => value.get(`${group}\u0000${period}`);
  const { shown, rest } = series(result.groups, metric);
  const colour = new Map(shown.map((g, i) => [g.key, COLOURS[i]]));

  // the stacked total (bars) or the highest value (lines) decides the axis
  let top = 0;
  if (metric === 'calls') {
    for (const p of periods) top = Math.max(top, result.groups.reduce((s, g) => s + (cell(g.key, p)?.calls ?? 0), 0));
  } else {
    for (const c of result.cells) if (c[metric] != null) top = Math.max(top, c[metric]);
  }
  const yMax = fixedMax ?? niceMax(top, metric === 'calls');
  const y = (v) => PAD.top + plotH - (plotH * v) / yMax;

  const root = svg('svg', { width, height: HEIGHT, viewBox: `0 0 ${width} ${HEIGHT}`, role: 'img',
    'aria-label': label, class: `trend-svg metric-${metric}`, dataset: { metric } });
  const axis = svg('g', { class: 'axis' });
  for (let i = 0; i <= TICKS; i++) {
    const v = (yMax * i) / TICKS;
    axis.append(svg('line', { x1: PAD.left, x2: width - PAD.right, y1: y(v), y2: y(v), class: i ? 'grid' : 'base' }),
      svg('text', { x: PAD.left - 6, y: y(v) + 4, 'text-anchor': 'end', text: format(v) }));
  }
  const every = Math.ceil(periods.length / Math.max(1, Math.floor(plotW / 64)));   // labels at least 64 px apart
  periods.forEach((p, i) => {
    if (i % every) return;
    axis.append(svg('text', { x: xMid(i), y: HEIGHT - PAD.bottom + 18, 'text-anchor': 'middle',
      text: periodLabel(p, result.period) }));
  });
  root.append(axis);

  if (metric === 'calls') {
    const barW = Math.max(2, Math.min(48, slot * 0.7));
    const bars = svg('g', { class: 'bars' });
    periods.forEach((p, i) => {
      let base = 0;
      const stack = shown.map((g) => [g.key, g.name, cell(g.key, p)?.calls ?? 0, colour.get(g.key)]);
      if (rest.length) stack.push([OTHERS, OTHERS, rest.reduce((s, g) => s + (cell(g.key, p)?.calls ?? 0), 0), OTHERS_COLOUR]);
      for (const [key, name, n, fill] of stack) {
        if (!n) continue;
        bars.append(svg('rect', { x: xMid(i) - barW / 2, y: y(base + n), width: barW, height: y(base) - y(base + n),
          fill, class: 'bar', dataset: { group: key, period: p, value: n } },
        svg('title', { text: `${name} · ${periodLabel(p, result.period)}：${n} 通` })));
        base += n;
      }
    });
    root.append(bars);
  } else {
    for (const g of shown) {
      const lines = svg('g', { class: 'series', dataset: { group: g.key } });
      let d = '', pen = 'M';
      periods.forEach((p, i) => {
        const v = cell(g.key, p)?.[metric];
        if (v == null) return;          // no calls (or none scored) then: the line joins its neighbours
        d += `${pen}${xMid(i).toFixed(1)},${y(v).toFixed(1)}`;
        pen = 'L';
        lines.append(svg('circle', { cx: xMid(i), cy: y(v), r: 3.5, fill: colour.get(g.key), class: 'point',
          dataset: { group: g.key, period: p, value: v } },
        svg('title', { text: `${g.name} · ${periodLabel(p, result.period)}：${format(v)}（${cell(g.key, p).calls} 通）` })));
      });
      lines.prepend(svg('path', { d, stroke: colour.get(g.key), fill: 'none', class: 'line' }));
      root.append(lines);
    }
  }
  chart.replaceChildren(root);
  const entries = shown.map((g) => [g.key, g.name, colour.get(g.key)]);
  if (rest.length && metric === 'calls') entries.push([OTHERS, `${OTHERS}（${rest.length}）`, OTHERS_COLOUR]);
  legend.replaceChildren(...entries.map(([key, name, fill]) => el('li', { dataset: { group: key } }, swatch(fill), name)));
}

function swatch(fill) {
  const mark = el('i');
  mark.style.background = fill;       // CSSOM: the page's CSP refuses style attributes
  return mark;
}

function drawTables() {
  const groupLabel = result.by === 'agent' ? '坐席' : '类别';
  const keys = Object.keys(METRICS).filter((k) => result.has_escalation || !k.startsWith('escalation'));
  const totals = document.getElementById('totals');
  totals.tHead.replaceChildren(el('tr', {}, el('th', { text: groupLabel }), keys.map((k) => el('th', { text: METRICS[k][0] }))));
  totals.tBodies[0].replaceChildren(...result.groups.map((g) => el('tr', { dataset: { group: g.key } },
    el('th', { text: g.name }), keys.map((k) => el('td', { text: show(k, g.total[k]) })))));

  const metric = form.metric.value;
  document.getElementById('detail-title').textContent = `明细：${METRICS[metric][0]}`;
  const detail = document.getElementById('detail');
  const byCell = new Map(result.cells.map((c) => [`${c.group}\u0000${c.period}`, c]));
  detail.tHead.replaceChildren(el('tr', {}, el('th', { text: groupLabel }),
    result.periods.map((p) => el('th', { text: periodLabel(p, result.period) }))));
  detail.tBodies[0].replaceChildren(...result.groups.map((g) => el('tr', { dataset: { group: g.key } },
    el('th', { text: g.name }), result.periods.map((p) => {
      const c = byCell.get(`${g.key}\u0000${p}`);
      return el('td', { text: c ? show(metric, c[metric]) : (metric === 'calls' ? '0' : '—') });
    }))));
}

function fillMetrics(hasEscalation) {
  const chosen = form.metric.value || new URLSearchParams(location.search).get('metric') || 'calls';
  const keys = CHARTED.filter((k) => hasEscalation || k !== 'escalation');
  form.metric.replaceChildren(...keys.map((k) => el('option', { value: k, text: METRICS[k][0] })));
  form.metric.value = keys.includes(chosen) ? chosen : 'calls';
}

function query() {
  const params = new URLSearchParams();
  for (const name of ['by', 'period', 'from', 'to']) params.set(name, form[name].value);
  return params;
}

function failed(message) {
  errorLine.textContent = message;
  errorLine.hidden = false;
  document.body.dataset.ready = '1';
}

async function load() {
  const params = query();
  exportLink.href = `/trends/export.csv?${params}`;
  history.replaceState(null, '', `?${params}&metric=${form.metric.value}`);
  document.body.removeAttribute('data-ready');
  if (!form.from.value || !form.to.value) return failed('请选择开始日期和结束日期。');
  if (form.from.value > form.to.value) return failed('开始日期不能晚于结束日期。');
  const asked = ++asking;
  document.getElementById('trend-summary').textContent = '正在统计…';
  const response = await fetch(`/api/trends?${params}`, { headers: { Accept: 'application/json' }, credentials: 'same-origin' });
  if (response.status === 401) { location.href = '/login?next=' + encodeURIComponent(location.pathname); return; }
  const body = await response.json().catch(() => ({}));
  if (asked !== asking) return;           // a newer query was asked for meanwhile: it draws
  if (!response.ok) return failed(body.error ?? `查询失败（HTTP ${response.status}）`);
  result = body;
  errorLine.hidden = true;
  fillMetrics(result.has_escalation);
  const total = result.groups.reduce((s, g) => s + g.total.calls, 0);
  document.getElementById('trend-summary').textContent = result.groups.length
    ? `${result.from} 至 ${result.to}：${result.groups.length} 个${result.by === 'agent' ? '坐席' : '类别'}` +
      (result.by === 'agent' ? `，共 ${total} 通电话` : '') +
      (result.has_escalation ? '' : '。尚无升级风险评分，未显示该指标')
    : `${result.from} 至 ${result.to}：这段时间没有通话。`;
  drawChart();
  drawTables();
  document.body.dataset.ready = '1';
}

function init() {
  const params = new URLSearchParams(location.search);
  const today = new Date();
  const monthAgo = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 29);
  form.from.value = params.get('from') || isoDay(monthAgo);
  form.to.value = params.get('to') || isoDay(today);
  for (const name of ['by', 'period']) if (params.get(name)) form[name].value = params.get(name);
  fillMetrics(true);
  form.addEventListener('submit', (event) => { event.preventDefault(); load(); });
  for (const name of ['by', 'period']) form[name].addEventListener('change', load);
  form.metric.addEventListener('change', () => {
    history.replaceState(null, '', `?${query()}&metric=${form.metric.value}`);
    if (result) { drawChart(); drawTables(); }
  });
  new ResizeObserver(() => { if (result) drawChart(); }).observe(chart);
  load();
}

init();
window.callassist = { reload: load };
