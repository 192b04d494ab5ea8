"""QA review: the call archive (filters, Chinese full-text search), one call's page
(recording, transcript, triggers on a timeline, script adherence, the reviewer's
verdict), exports, and the recording itself.

A recording is found only through the call's row in the database and served only if
it lies inside data_dir/recordings: nothing from the request names a file.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web

from agent_ui.auth import can_review
from agent_ui.security import (APP_PLAYBOOK, APP_STORE, REQ_CSRF, current_user, redirect,
                               require_call)
from agent_ui.views.api import BadRequest, adherence_window, call_detail, json_body
from agent_ui.views.export import FORMATS
from agent_ui.views.render import page

log = logging.getLogger(__name__)

VERDICTS = {"pass": "合格", "improve": "需改进", "fail": "不合格"}
MAX_NOTES = 4000
AUDIO_TYPES = {".wav": "audio/wav", ".flac": "audio/flac", ".ogg": "audio/ogg", ".mp3": "audio/mpeg"}


async def archive(request: web.Request) -> web.StreamResponse:
    user = current_user(request)
    return page(request, "qa_list.html", "质检回放", script="qa_list.js",
                agent_filter_class="hidden" if user["role"] == "agent" else "")


def call_when(epoch: float | None, now: float | None = None) -> str:
    """11月30日 14:05 (with the year when it is not this year), local time."""
    if not epoch:
        return ""
    when, today = time.localtime(epoch), time.localtime(now)
    year = f"{when.tm_year}年" if when.tm_year != today.tm_year else ""
    return f"{year}{when.tm_mon}月{when.tm_mday}日 {when.tm_hour:02d}:{when.tm_min:02d}"


def call_title(call: dict[str, Any]) -> str:
    """How people name a call: who called and when (13812345678 · 11月30日 14:05)."""
    return " · ".join(part for part in (call.get("caller") or "未知号码",
                                        call_when(call.get("started_at"))) if part)


async def call_page(request: web.Request) -> web.StreamResponse:
    call = require_call(request, request.match_info["call_id"])
    user = current_user(request)
    reviewer = can_review(user)
    title = call_title(call)
    return page(request, "qa_call.html", title, script="qa_call.js",
                call_id=call["call_id"], call_title=title, can_review="1" if reviewer else "",
                review_class="" if reviewer else "hidden", csrf=request.get(REQ_CSRF, ""),
                username=user["username"])


NO_VERDICT = "请先选择质检结论（合格、需改进或不合格），再保存。"


async def save_review(request: web.Request) -> web.StreamResponse:
    call = require_call(request, request.match_info["call_id"])
    user = current_user(request)
    if not can_review(user):
        raise web.HTTPForbidden(text="无权填写质检结论", content_type="text/plain")
    if request.content_type == "application/json":
        form: Any = await json_body(request)
        if not isinstance(form, dict):
            raise BadRequest("请求体应为 JSON 对象")
    else:
        form = await request.post()
    verdict = form.get("verdict", "")
    notes = form.get("notes", "")
    if not isinstance(notes, str):          # null, a number, an uploaded file: not notes
        raise BadRequest("notes: 备注应为文字")
    if not isinstance(verdict, str) or verdict not in VERDICTS:
        # no default verdict: a review says what the reviewer chose, or is not saved
        if request.content_type == "application/json":
            raise BadRequest(f"verdict: {NO_VERDICT}（{', '.join(VERDICTS)}）")
        return page(request, "message.html", "结论未保存", status=400, heading="结论未保存",
                    message=NO_VERDICT, back=f"/qa/call/{call['call_id']}#review",
                    back_label="返回该通话")
    if len(notes) > MAX_NOTES:
        raise BadRequest(f"notes: 最多 {MAX_NOTES} 字")
    score = call_detail(call, request.app[APP_PLAYBOOK], adherence_window(request))["adherence"]["score"]
    store = request.app[APP_STORE]
    await store.off_loop(store.reviews.save_review, call["call_id"], user["username"], verdict, notes, score)
    log.info("review of call %s by %s: %s", call["call_id"], user["username"], verdict)
    if request.content_type == "application/json":
        return web.json_response({"ok": True, "verdict": verdict, "adherence_score": score})
    return redirect(f"/qa/call/{call['call_id']}#review")


async def export(request: web.Request) -> web.StreamResponse:
    call = require_call(request, request.match_info["call_id"])
    fmt = request.match_info["fmt"]
    if fmt not in FORMATS:
        raise web.HTTPNotFound()
    formatter, content_type = FORMATS[fmt]
    detail = call_detail(call, request.app[APP_PLAYBOOK], adherence_window(request))
    return web.Response(text=formatter(detail), content_type=content_type, charset="utf-8",
                        headers={"Content-Disposition": attachment(f"call-{call['call_id']}.{fmt}")})


def attachment(filename: str) -> str:
    """Content-Disposition for a download (RFC 6266): an ASCII `filename` for old
    clients (anything else as _) and the real name, UTF-8, as `filename*`."""
    # letters, digits, CJK ... but no path separators, quotes or control characters
    name = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in filename)
    ascii_name = "".join(ch if ch.isascii() else "_" for ch in name)
    header = f'attachment; filename="{ascii_name}"'
    if name != ascii_name:
        header += f"; filename*=UTF-8''{quote(name, safe='')}"
    return header


def recording_file(store: Any, call: dict[str, Any]) -> Path | None:
    """The call's recording if it exists inside the store's recordings folder."""
    recorded = call.get("recording_path")
    if not recorded:
        return None
    path = Path(recorded)
    if not path.is_absolute():
        path = store.path.parent / path
    try:
        resolved = path.resolve(strict=True)
        root = store.recordings_dir.resolve()
    except OSError:
        return None
    if not resolved.is_relative_to(root) or not resolved.is_file():
        log.warning("call %s: recording %s is outside %s; not served", call["call_id"], path, root)
        return None
    return resolved


async def recording(request: web.Request) -> web.StreamResponse:
    call = require_call(request, request.match_info["call_id"])
    path = recording_file(request.app[APP_STORE], call)
    if path is None:
        raise web.HTTPNotFound(text="没有录音文件", content_type="text/plain")
    response = web.FileResponse(path)      # answers Range requests (seeking in <audio>)
    response.content_type = AUDIO_TYPES.get(path.suffix.lower(), "application/octet-stream")
    response.headers["Content-Disposition"] = "inline"
    return response


def setup(app: web.Application) -> None:
    app.router.add_get("/qa", archive)
    app.router.add_get("/qa/call/{call_id}", call_page)
    app.router.add_post("/qa/call/{call_id}/review", save_review)
    app.router.add_get(r"/qa/call/{call_id}/export.{fmt}", export)
    app.router.add_get("/recordings/{call_id}", recording)
