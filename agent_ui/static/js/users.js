// User management for admins: the users, one user's editor (password, role, endpoints,
// disable/enable, sessions, log out everywhere) and the audit log. Every change is a
// POST with the session's CSRF token; the server's message is shown as it comes.
import { el, csrfToken, getJSON, callWhen } from './common.js';

const ROLE_NAMES = { agent: '坐席', supervisor: '班长', qa: '质检', admin: '管理员' };
const ACTIONS = {
  login: '登录', logout: '退出', 'login.failed': '登录失败', 'login.rate_limited': '登录被限流',
  'login.disabled': '停用账号尝试登录', 'user.add': '添加用户', 'user.remove': '删除用户',
  'user.password': '修改密码', 'user.role': '修改角色', 'user.endpoints': '修改分机',
  'user.disable': '停用账号', 'user.enable': '重新启用', 'user.logout_everywhere': '全部下线',
};

const $ = (selector) => document.querySelector(selector);
let roles = [];
let current = null;          // the username being edited

function say(message, problem = '') {
  $('#notice').textContent = message;
  $('#problem').textContent = problem;
}

async function post(action, body = {}) {
  const response = await fetch(`/api/users/${encodeURIComponent(current)}/${action}`, {
    method: 'POST', credentials: 'same-origin',
    headers: { 'Content-Type': 'application/json', Accept: 'application/json', 'X-CSRF-Token': csrfToken() },
    body: JSON.stringify(body),
  });
  if (response.status === 401) { location.href = '/login?next=/users'; return null; }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) { say('', data.error || `操作失败（HTTP ${response.status}）`); return null; }
  return data;
}

function when(epoch) {
  return epoch ? callWhen(epoch) : '';
}

async function loadUsers() {
  const data = await getJSON('/api/users');
  roles = data.roles;
  const body = $('#users tbody');
  body.replaceChildren(...data.users.map((u) => el('tr', { dataset: { user: u.username }, class: u.disabled ? 'disabled' : '' },
    el('td', { text: u.username }), el('td', { text: u.display_name }),
    el('td', { text: ROLE_NAMES[u.role] || u.role }), el('td', { text: u.endpoints.join(', ') || '—' }),
    el('td', { class: 'state', text: u.disabled ? '已停用' : '正常' }), el('td', { class: 'sessions', text: String(u.sessions) }),
    el('td', {}, el('button', { type: 'button', class: 'edit', onclick: () => edit(u) }, '编辑')))));
  return data.users;
}

async function loadSessions() {
  const data = await getJSON(`/api/users/${encodeURIComponent(current)}/sessions`);
  $('#sessions tbody').replaceChildren(...(data.sessions.length ? data.sessions.map((s) => el('tr', {},
    el('td', { text: s.id }), el('td', { text: when(s.created_at) }), el('td', { text: when(s.expires_at) }),
    el('td', { text: s.address || '—' }), el('td', { text: s.user_agent || '—' })))
    : [el('tr', {}, el('td', { colspan: 5, class: 'idle small', text: '没有在线会话' }))]));
}

async function loadAudit() {
  const data = await getJSON('/api/users/audit?limit=200');
  $('#audit tbody').replaceChildren(...data.entries.map((e) => el('tr', {},
    el('td', { text: when(e.at) }), el('td', { text: e.actor }), el('td', { class: 'action', text: ACTIONS[e.action] || e.action }),
    el('td', { text: e.target }), el('td', { text: e.address || '—' }),
    el('td', { class: 'detail', text: detailText(e.detail) }))));
}

// {"from": "agent", "to": "qa", "sessions_ended": 2} -> "坐席 → 质检；下线会话 2 个"
function detailText(detail) {
  const name = (value) => (Array.isArray(value) ? value.join(', ') || '无' : ROLE_NAMES[value] || String(value));
  const parts = [];
  if ('from' in detail) parts.push(`${name(detail.from)} → ${name(detail.to)}`);
  if (detail.role) parts.push(`角色 ${name(detail.role)}`);
  if (detail.endpoints?.length) parts.push(`分机 ${detail.endpoints.join(', ')}`);
  if (detail.sessions_ended) parts.push(`下线会话 ${detail.sessions_ended} 个`);
  if (detail.retry_after) parts.push(`${detail.retry_after} 秒后可重试`);
  if (detail.known_user === false) parts.push('用户不存在');
  return parts.join('；');
}

function edit(user) {
  current = user.username;
  $('#editor').hidden = false;
  $('#editing').textContent = user.username;
  const select = $('#role-form select');
  select.replaceChildren(...roles.map((r) => el('option', { value: r, selected: r === user.role }, ROLE_NAMES[r] || r)));
  $('#endpoints-form input').value = user.endpoints.join(' ');
  $('#disable').hidden = user.disabled;
  $('#enable').hidden = !user.disabled;
  say('');
  loadSessions();
}

async function after(data, message) {
  if (!data) return;
  const users = await loadUsers();
  const user = users.find((u) => u.username === current);
  if (user) edit(user);                      // refreshed: state, sessions
  say(data.warning ? `${message}；${data.warning}` : message);
  await loadAudit();
}

function on(selector, action, body, message) {
  const node = $(selector);
  const handler = async (event) => {
    event.preventDefault();
    const data = await post(action, body ? body(node) : {});
    await after(data, message);
  };
  node.addEventListener(node.tagName === 'FORM' ? 'submit' : 'click', handler);
}

on('#password-form', 'password', (form) => {
  const value = form.password.value; form.password.value = ''; return { password: value };
}, '密码已修改，该用户的其他会话已下线');
on('#role-form', 'role', (form) => ({ role: form.role.value }), '角色已修改，该用户需重新登录');
on('#endpoints-form', 'endpoints', (form) => ({
  endpoints: form.endpoints.value.split(/[\s,，]+/).filter(Boolean),
}), '分机已保存');
on('#disable', 'disable', null, '账号已停用，所有会话已下线');
on('#enable', 'enable', null, '账号已重新启用');
on('#logout-all', 'logout', null, '该用户已全部下线');

loadUsers().then(loadAudit).catch((error) => say('', `加载失败：${error.message}`));
