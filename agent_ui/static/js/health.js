// Is assist working? Polls GET /healthz (callassist.health) and shows its Chinese notices
// in `target` while the status is not ok: the supervisor board's banner, the agent
// screen's quiet notice. Polled rather than pushed on /ws: that socket carries the
// store's call events (replayed from the store on reconnect), and health is neither a
// call event nor stored; a poll also still speaks when the store or the socket is what broke.

export const HEALTH_POLL_MS = 3000;

export function watchHealth(target) {
  async function poll() {
    let text = '';
    try {
      const response = await fetch('/healthz', { headers: { Accept: 'application/json' },
        credentials: 'same-origin', cache: 'no-store' });
      const report = await response.json();      // 503 (down) carries the report too
      target.dataset.status = report.status;
      if (report.status !== 'ok') text = report.notices.join('；');
    } catch (error) {
      target.dataset.status = 'unknown';
      text = '无法获取坐席助手的状态：服务器无响应';
    }
    target.textContent = text;
    target.hidden = !text;
    setTimeout(poll, HEALTH_POLL_MS);
  }
  poll();
}
