"""User management in a real browser (Debian's chromium via Playwright) against the
real app: an admin finds 用户管理 in the nav, disables and re-enables a user, changes
their role, endpoints and password, lists their sessions and logs them out
everywhere; each change ends the user's live sessions (the rows are gone, so their
next request is refused) and shows in the audit log. Changes carry the CSRF token."""
from __future__ import annotations

import shutil

import pytest
import pytest_asyncio

from agent_ui.auth import verify_password
from callassist.bus import EventBus
from web_fixtures import (CHROMIUM, PASSWORD, browser_env, client_session, http_login, make_config,
                          make_store, open_page)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason=f"{CHROMIUM} not installed "
                       "(apt-get install chromium)"),
]

NEW_PASSWORD = "brand-new-secret-7"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory):
    config = make_config(tmp_path_factory.mktemp("web-users"))
    async with browser_env(config, make_store(config), EventBus(), tmp_path_factory) as e:
        yield e


async def admin_page(env):
    # the changes end sessions on purpose: refused requests are expected, uncaught errors are not
    return await open_page(env, "root", {"width": 1440, "height": 900}, console=False)


async def status_of(http, url: str) -> int:
    async with http.get(f"{url}/api/me") as response:
        return response.status


async def edit(page, username: str) -> None:
    await page.locator(f'#users tr[data-user="{username}"] button.edit').click()
    await page.wait_for_selector(f'#editing:text-is("{username}")')


async def test_admin_manages_a_user_and_each_change_ends_their_sessions(env):
    url, accounts = env.server.url, env.store.accounts
    page = await admin_page(env)
    async with page.expect_navigation():
        await page.click('nav a:text-is("用户管理")')
    assert page.url.endswith("/users")
    await page.wait_for_selector('#users tr[data-user="zhang.wei"]')
    await edit(page, "zhang.wei")

    password = {"now": PASSWORD}

    async def logged_in_user():
        http = client_session()
        await http_login(http, url, "zhang.wei", password["now"])
        assert await status_of(http, url) == 200                      # live before the change
        return http

    # disable: the user's session ends, the row says so, the audit log shows it
    user = await logged_in_user()
    await page.click("#disable")
    await page.wait_for_selector('#notice:has-text("账号已停用")')
    assert await status_of(user, url) == 401
    assert await page.locator('#users tr[data-user="zhang.wei"] .state').inner_text() == "已停用"
    await page.wait_for_selector('#audit tr:has(td.action:text-is("停用账号")):has(td:text-is("zhang.wei"))')
    await user.close()
    await page.click("#enable")
    await page.wait_for_selector('#notice:has-text("重新启用")')
    assert not accounts.get_user("zhang.wei")["disabled"]

    # role, endpoints, password: each one ends the sessions
    user = await logged_in_user()
    await page.select_option("#role-form select", "qa")
    await page.click('#role-form button[type="submit"]')
    await page.wait_for_selector('#notice:has-text("角色已修改")')
    assert accounts.get_user("zhang.wei")["role"] == "qa" and await status_of(user, url) == 401
    await user.close()

    user = await logged_in_user()
    await page.fill("#endpoints-form input", "PJSIP/1005, PJSIP/1006")
    await page.click('#endpoints-form button[type="submit"]')
    await page.wait_for_selector('#notice:has-text("分机已保存")')
    assert accounts.get_user("zhang.wei")["endpoints"] == ["PJSIP/1005", "PJSIP/1006"]
    assert await status_of(user, url) == 401
    await user.close()

    user = await logged_in_user()
    await page.fill('#password-form input[name="password"]', NEW_PASSWORD)
    await page.click('#password-form button[type="submit"]')
    await page.wait_for_selector('#notice:has-text("密码已修改")')
    assert verify_password(accounts.get_user("zhang.wei")["password_hash"], NEW_PASSWORD)
    password["now"] = NEW_PASSWORD
    assert await status_of(user, url) == 401
    await user.close()

    # the sessions list, then log out everywhere
    user = await logged_in_user()
    await edit(page, "zhang.wei")
    await page.wait_for_selector('#sessions td:text-is("127.0.0.1")')
    await page.click("#logout-all")
    await page.wait_for_selector('#notice:has-text("全部下线")')
    await page.wait_for_selector('#sessions td:text-is("没有在线会话")')
    assert await status_of(user, url) == 401
    await user.close()

    # an admin cannot lock themselves out here; the page says why
    await edit(page, "root")
    await page.click("#disable")
    await page.wait_for_selector('#problem:has-text("不能停用自己的账号")')
    assert not accounts.get_user("root")["disabled"]
    actions = [e["action"] for e in accounts.audit_log(200, "zhang.wei") if e["actor"] == "root"]
    assert actions == ["user.logout_everywhere", "user.password", "user.endpoints", "user.role",
                       "user.enable", "user.disable"]
    assert page.errors == []
    await page.context.close()


async def test_changes_need_the_csrf_token_and_the_admin_role(env):
    url = env.server.url
    page = await admin_page(env)
    await page.goto(f"{url}/users")
    await page.wait_for_selector('#users tr[data-user="li.na"]')
    post = """async ([withToken]) => {
        const headers = {'Content-Type': 'application/json'};
        if (withToken) headers['X-CSRF-Token'] = document.querySelector('meta[name="csrf-token"]').content;
        const r = await fetch('/api/users/li.na/disable', {method: 'POST', headers, body: '{}'});
        return r.status; }"""
    assert await page.evaluate(post, [False]) == 403
    assert not env.store.accounts.get_user("li.na")["disabled"]
    assert await page.evaluate(post, [True]) == 200                   # positive control
    assert env.store.accounts.get_user("li.na")["disabled"]
    env.store.accounts.set_disabled("li.na", False)
    await page.context.close()

    async with client_session() as http:                              # a supervisor: no access
        await http_login(http, url, "wang.qiang")
        async with http.get(f"{url}/supervisor") as response:
            assert "用户管理" not in await response.text()
        for path in ("/users", "/api/users", "/api/users/audit", "/api/users/li.na/sessions"):
            async with http.get(f"{url}{path}", allow_redirects=False) as response:
                assert response.status == 403, path
        async with http.get(f"{url}/qa") as response:
            assert response.status == 200                             # positive control
