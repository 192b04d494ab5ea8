// Small helpers shared by every page: DOM building, CSRF-protected requests,
// time formatting, Chinese labels, the alert beep.

export const SPEAKERS = { customer: '客户', agent: '坐席' };
export const SEVERITIES = { critical: '严重', warning: '警告', info: '提示' };
export const RISKS = { critical: '高风险', warning: '关注', normal: '正常' };
export const VERDICTS = { pass: '合格', improve: '需改进', fail: '不合格' };

// el('div', {class: 'x', dataset: {id: 1}, onclick: f}, child, 'text', ...)
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else if (key === 'text') node.textContent = value;
    else node.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// Recognisers print Chinese words separated by spaces ("我 要 投诉"); read without them.
const CJK_GAP = /(?<=[\u3000-\u9fff\uff00-\uffef])\s+(?=[\u3000-\u9fff\uff00-\uffef])/g;
export function spoken(text) {
  return (text ?? '').replace(CJK_GAP, '');
}

export function csrfToken() {
  return document.querySelector('meta[name="csrf-token"]')?.content ?? '';
}

export async function getJSON(url) {
  const response = await fetch(url, { headers: { Accept: 'application/json' }, credentials: 'same-origin' });
  if (response.status === 401) { location.href = '/login?next=' + encodeURIComponent(location.pathname); }
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.json();
}

export async function postJSON(url, body = {}) {
  const response = await fetch(url, {
    method: 'POST', credentials: 'same-origin',
    headers: { 'Content-Type': 'application/json', Accept: 'application/json', 'X-CSRF-Token': csrfToken() },
    body: JSON.stringify(body),
  });
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.json();
}

// 75.4 -> "01:15"; 3725 -> "1:02:05"
export function clock(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const h = Math.floor(s / 3600), m = Math.floor(s / 60) % 60, sec = s % 60;
  const mm = String(m).padStart(2, '0'), ss = String(sec).padStart(2, '0');
  return h ? `${h}:${mm}:${ss}` : `${mm}:${ss}`;
}

// How people name a call's time: "11月30日 14:05" (the year too when not this year).
export function callWhen(epoch) {
  if (!epoch) return '';
  const when = new Date(epoch * 1000);
  const year = when.getFullYear() !== new Date().getFullYear() ? `${when.getFullYear()}年` : '';
  const hh = String(when.getHours()).padStart(2, '0'), mm = String(when.getMinutes()).padStart(2, '0');
  return `${year}${when.getMonth() + 1}月${when.getDate()}日 ${hh}:${mm}`;
}

// "坐席 张伟", but a value that already starts with the label (the display name
// "坐席 1001") is not labelled twice.
export function labelled(label, value) {
  return value.startsWith(label) ? value : `${label} ${value}`;
}

// The agent of a call: display name (endpoint), or whichever is known.
export function agentText(call) {
  const name = call.agent_name || call.agent_username || '';
  const endpoint = call.agent_endpoint || '';
  if (name && endpoint && !name.includes(endpoint)) return `${name}（${endpoint}）`;
  return name || endpoint;
}

export function dateTime(epoch) {
  if (!epoch) return '';
  return new Date(epoch * 1000).toLocaleString('zh-CN', { hour12: false });
}

// Critical alerts: a short two-tone beep made with WebAudio (no sound file). Browsers
// only let a page make sound after the user has interacted with it, so the context is
// resumed on the first click or key press.
let audioContext = null;
function context() {
  audioContext ??= new (window.AudioContext || window.webkitAudioContext)();
  return audioContext;
}
for (const type of ['pointerdown', 'keydown']) {
  addEventListener(type, () => { if (audioContext?.state === 'suspended') audioContext.resume(); }, { capture: true });
}

export function beep(times = 2) {
  document.body.dataset.beeps = String(Number(document.body.dataset.beeps || 0) + 1);
  try {
    const ctx = context();
    if (ctx.state === 'suspended') ctx.resume();
    const start = ctx.currentTime + 0.02;
    for (let i = 0; i < times; i++) {
      const osc = ctx.createOscillator(), gain = ctx.createGain();
      osc.type = 'sine';
      osc.frequency.value = i % 2 ? 660 : 880;
      const t = start + i * 0.22;
      gain.gain.setValueAtTime(0.0001, t);
      gain.gain.exponentialRampToValueAtTime(0.3, t + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, t + 0.18);
      osc.connect(gain).connect(ctx.destination);
      osc.start(t);
      osc.stop(t + 0.2);
    }
  } catch (error) {
    console.warn('beep failed', error);
  }
}

export function showConnection(state) {
  const badge = document.getElementById('conn');
  if (!badge) return;
  badge.hidden = false;
  badge.dataset.state = state;
  badge.textContent = { open: '已连接', connecting: '连接中…', closed: '已断开，正在重连…' }[state] ?? state;
}
