"""The supervisor board's banner and the agent screen's notice when assist is cut off from
Asterisk, in a real browser (Debian's chromium, Playwright), against the real web app and
ARI app with the ARI test peer going down and coming back."""
from __future__ import annotations

import shutil

import pytest
from ari_peer import AriPeer
from test_health import CUSTOMER_WAV, start_stack
from web_fixtures import CHROMIUM, browser_login, launch_browser

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason=f"{CHROMIUM} not installed "
                       "(apt-get install chromium)"),
    pytest.mark.skipif(not CUSTOMER_WAV.is_file(), reason=f"{CUSTOMER_WAV} not found"),
]

WAIT_MS = 20000      # a few /healthz polls (health.js: every 3 s) and reconnect attempts


async def test_board_banner_shows_while_asterisk_is_away_and_goes_when_it_is_back(tmp_path):
    from playwright.async_api import async_playwright
    peer = await AriPeer().start()
    stack = await start_stack(tmp_path, peer)
    playwright = await async_playwright().start()
    browser = await launch_browser(playwright)
    try:
        await stack.ari.wait_ready(5)
        board = await (await browser.new_context()).new_page()
        await browser_login(board, stack.server.url, "wang.qiang")
        await board.goto(f"{stack.server.url}/supervisor")
        agent = await (await browser.new_context()).new_page()
        await browser_login(agent, stack.server.url, "zhang.wei")
        await agent.goto(f"{stack.server.url}/agent")
        banner, notice = board.locator("#health-banner"), agent.locator(".health-notice")
        # connected: the poll ran (status known) and nothing is shown
        await board.wait_for_selector('#health-banner[data-status="ok"]', state="attached", timeout=WAIT_MS)
        await agent.wait_for_selector('.health-notice[data-status="ok"]', state="attached", timeout=WAIT_MS)
        assert not await banner.is_visible() and not await notice.is_visible()

        await peer.stop()                                     # Asterisk goes away
        await board.wait_for_selector('#health-banner[data-status="down"]', state="visible", timeout=WAIT_MS)
        assert "坐席助手未连接 Asterisk，通话未被监听" in await banner.text_content()
        await agent.wait_for_selector('.health-notice[data-status="down"]', state="visible", timeout=WAIT_MS)
        assert "未连接 Asterisk" in await notice.text_content()
        # loud on the board, quiet for the agent
        assert await banner.evaluate("e => getComputedStyle(e).color") == "rgb(255, 255, 255)"

        await peer.start()                                    # Asterisk is back
        # (health.js sets the status and hides the text in one step)
        await board.wait_for_selector('#health-banner[data-status="ok"]', state="attached", timeout=WAIT_MS)
        await agent.wait_for_selector('.health-notice[data-status="ok"]', state="attached", timeout=WAIT_MS)
        assert not await banner.is_visible() and not await notice.is_visible()
        assert stack.ari.connection.state == "connected"
    finally:
        await browser.close()
        await playwright.stop()
        await stack.ari.stop()
        await stack.server.stop()
        stack.engine.close()
        stack.store.close()
        await peer.stop()
