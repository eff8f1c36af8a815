"""The web dashboard in headless Firefox (Debian's ``firefox-esr``) against a real
broker (a ``python -m trioq.broker`` subprocess, memory storage, an admin token): it
asks for the token, goes live over the WebSocket with pushed stats, shows the
leader's lease, shows a job submitted through the API, fits a phone's width, and
writes screenshots into the test's tmp dir (paths printed: run with ``-s``).

Playwright cannot drive a stock Firefox (it needs its own patched build, which is a
download), and Selenium needs geckodriver, which Debian does not package. Firefox
speaks WebDriver BiDi itself: started with ``--remote-debugging-port``, it prints
``WebDriver BiDi listening on ws://127.0.0.1:<port>`` and takes BiDi commands on a
WebSocket at ``/session``. :class:`Bidi` is the minimal client these tests need
(``session.new``, ``browsingContext.navigate``/``setViewport``/``captureScreenshot``,
``script.evaluate``, ``log.entryAdded`` events), over httpx-ws, in the test's trio run.
A wait for the page to reach a state is one ``script.evaluate`` of a promise that
resolves when a condition on the DOM holds (checked every 50 ms in the page), with a
bound that only a hang reaches: no test sleeps hoping the page got there.

Skipped, saying why, without ``firefox-esr`` (``.ci/run`` installs it).
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from httpx_ws import AsyncWebSocketSession, aconnect_ws

from _broker_proc import broker_process
from _waits import wait_for

FIREFOX = shutil.which("firefox-esr") or shutil.which("firefox")

pytestmark = [
    pytest.mark.skipif(
        FIREFOX is None, reason="no firefox-esr (apt-get install firefox-esr; .ci/run does)"
    ),
    pytest.mark.timeout(180),
]

ADMIN = "firefox-admin-token"
WAIT_MS = 10_000
"""Bound on a wait for the page to reach a state (only a hang reaches it)."""
START_TIMEOUT = 60.0
"""Seconds Firefox may take to open its remote agent (a cold profile is slow)."""

PREFS = """
user_pref("browser.shell.checkDefaultBrowser", false);
user_pref("datareporting.policy.dataSubmissionEnabled", false);
user_pref("toolkit.telemetry.reportingpolicy.firstRun", false);
user_pref("app.update.disabledForTesting", true);
user_pref("browser.startup.homepage_override.mstone", "ignore");
user_pref("network.captive-portal-service.enabled", false);
user_pref("remote.prefs.recommended", true);
"""
"""A quiet profile: no first-run pages, update checks or telemetry."""


AGENT_LINE = re.compile(r"^WebDriver BiDi listening on (ws://\S+)$", re.MULTILINE)
"""The line Firefox prints once its remote agent listens."""

SOCKET_NOTICE = re.compile(
    r"(can.t establish a connection to the server at|The connection to) ws://\S+/v1/ws\b"
)
"""What Firefox logs (as a script error) when a WebSocket handshake is refused, or a
socket still connecting is closed: the page's first handshake is refused by design
(no token yet: 401) and closed when the token is asked for, as in Chromium. The page
handles both (``onclose``); neither is an error of its script."""


class BidiError(AssertionError):
    pass


class Bidi:
    """A WebDriver BiDi session over one WebSocket: commands, and the JavaScript
    errors the page logged (``log.entryAdded`` of type ``javascript``)."""

    def __init__(self, ws: AsyncWebSocketSession) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.errors: list[str] = []
        self.context = ""

    async def command(self, method: str, params: dict[str, Any] | None = None) -> Any:
        command_id = next(self.ids)
        await self.ws.send_text(
            json.dumps({"id": command_id, "method": method, "params": params or {}})
        )
        with trio.fail_after(WAIT_MS / 1000 + 20):
            while True:
                message = json.loads(await self.ws.receive_text())
                if message.get("type") == "event":
                    entry = message.get("params", {})
                    if (
                        message.get("method") == "log.entryAdded"
                        and entry.get("type") == "javascript"
                        and not SOCKET_NOTICE.search(str(entry.get("text")))
                    ):
                        self.errors.append(str(entry.get("text")))
                    continue
                if message.get("id") != command_id:
                    continue
                if message.get("type") == "error":
                    raise BidiError(f"{method}: {message.get('error')}: {message.get('message')}")
                return message["result"]

    async def start(self) -> None:
        await self.command("session.new", {"capabilities": {}})
        await self.command("session.subscribe", {"events": ["log.entryAdded"]})
        tree = await self.command("browsingContext.getTree")
        self.context = tree["contexts"][0]["context"]

    async def goto(self, url: str) -> None:
        await self.command(
            "browsingContext.navigate", {"context": self.context, "url": url, "wait": "complete"}
        )

    async def evaluate(self, expression: str) -> Any:
        result = await self.command(
            "script.evaluate",
            {
                "expression": expression,
                "target": {"context": self.context},
                "awaitPromise": True,
                "resultOwnership": "none",
            },
        )
        if result["type"] == "exception":
            details = result["exceptionDetails"]
            raise BidiError(
                f"{details.get('text')}; the page's header says "
                f"{await self._header()!r}; its errors: {self.errors}"
            )
        return _value(result["result"])

    async def _header(self) -> Any:
        result = await self.command(
            "script.evaluate",
            {
                "expression": "document.querySelector('header').innerText",
                "target": {"context": self.context},
                "awaitPromise": False,
            },
        )
        return _value(result.get("result", {"type": "undefined"}))

    async def wait_until(self, condition: str, what: str) -> Any:
        """The value of the JavaScript ``condition`` once it is truthy (checked in the
        page every 50 ms, for at most WAIT_MS)."""
        script = f"""new Promise((resolve, reject) => {{
          const start = performance.now();
          const check = () => {{
            let value;
            try {{ value = ({condition}); }} catch (err) {{ value = undefined; }}
            if (value) return resolve(value);
            if (performance.now() - start > {WAIT_MS}) return reject(new Error("not reached: " + {json.dumps(what)}));
            setTimeout(check, 50);
          }};
          check();
        }})"""
        return await self.evaluate(script)

    async def text(self, selector: str) -> str:
        value = await self.evaluate(f"document.querySelector({json.dumps(selector)}).textContent")
        return str(value)

    async def screenshot(self, path: Path) -> None:
        shot = await self.command(
            "browsingContext.captureScreenshot", {"context": self.context, "origin": "document"}
        )
        await trio.Path(path).write_bytes(base64.b64decode(shot["data"]))

    async def viewport(self, width: int, height: int) -> None:
        await self.command(
            "browsingContext.setViewport",
            {"context": self.context, "viewport": {"width": width, "height": height}},
        )


def _value(remote: dict[str, Any]) -> Any:
    """A BiDi remote value as Python (the kinds these tests read)."""
    kind = remote["type"]
    if kind in ("string", "number", "boolean"):
        return remote["value"]
    if kind in ("undefined", "null"):
        return None
    if kind == "array":
        return [_value(item) for item in remote.get("value", [])]
    return remote


@asynccontextmanager
async def firefox(profile: Path, log_path: Path) -> AsyncIterator[Bidi]:
    """Headless Firefox with a fresh profile and its remote agent on a free port
    (its output goes to ``log_path``, where the agent's address is read); killed
    when the block ends."""
    assert FIREFOX is not None
    await trio.Path(profile).mkdir()
    await trio.Path(profile / "user.js").write_text(PREFS)
    log = trio.Path(log_path)
    with log_path.open("wb") as log_file:
        process = await trio.lowlevel.open_process(
            [FIREFOX, "--headless", "--no-remote", "--profile", str(profile),
             "--remote-debugging-port=0", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
        )  # fmt: skip
    try:
        found: list[str] = []

        async def listening() -> bool:
            found[:] = AGENT_LINE.findall(await log.read_text(errors="replace"))
            return bool(found) or process.poll() is not None

        await wait_for(listening, within=START_TIMEOUT, what="Firefox's remote agent")
        if not found:
            raise AssertionError(
                f"Firefox exited ({process.returncode}) without a remote agent; its output:\n"
                + await log.read_text(errors="replace")
            )
        async with (
            httpx.AsyncClient() as client,
            aconnect_ws(f"{found[0]}/session", client) as ws,
        ):
            bidi = Bidi(ws)
            await bidi.start()
            yield bidi
    finally:
        with trio.move_on_after(10, shield=True):
            if process.returncode is None:
                process.kill()
            await process.wait()


async def test_the_dashboard_in_firefox(tmp_path: Path) -> None:
    env = {"GROUP_COMMIT_INTERVAL_MS": "50", "TRIOQ_ADMIN_TOKENS": ADMIN}
    args = ["--host", "127.0.0.1", "--port", "0", "--storage", "memory"]
    async with (
        broker_process(args, log_path=tmp_path / "broker.log", env=env) as broker,
        httpx.AsyncClient(base_url=broker.url, headers={"Authorization": f"Bearer {ADMIN}"}) as api,
        firefox(tmp_path / "profile", tmp_path / "firefox.log") as page,
    ):
        await page.goto(f"{broker.url}/")
        assert await page.evaluate("document.title") == "trioq dashboard"
        # the token prompt, answered
        await page.wait_until("!document.getElementById('auth').hidden", "the token prompt")
        await page.evaluate(
            f"document.getElementById('token-input').value = {json.dumps(ADMIN)};"
            "document.querySelector('#token-form button[type=submit]').click()"
        )
        await page.wait_until(
            "document.getElementById('conn').textContent === 'live (WebSocket, pushed)'",
            "live over the WebSocket, the stats pushed",
        )
        await page.wait_until(
            "/lease renewed [0-9.]+ s ago/.test(document.getElementById('lease').textContent)",
            "the lease shown",
        )
        assert "leader · epoch 1" in await page.text("#leader")

        answer = await api.post("/v1/jobs", json={"id": "from-api", "type": "email", "payload": 1})
        assert answer.status_code == 200, answer.text
        submitted = trio.current_time()
        await page.wait_until(
            "document.querySelector(\"#jobs-table tr[data-job-id='from-api']\")", "the job's row"
        )
        # as in Chromium: on the page within 2 s of the submit's answer (pushed)
        assert trio.current_time() - submitted < 2.0
        row = await page.text("#jobs-table tr[data-job-id='from-api']")
        assert "email" in row
        assert "queued" in row
        await page.wait_until(
            "document.getElementById('stat-unclaimed').textContent === '1'", "the count"
        )

        shot = tmp_path / "dashboard-firefox.png"
        await page.screenshot(shot)
        print(f"firefox screenshot: {shot}")
        assert shot.stat().st_size > 0

        # a phone's width: no sideways scrolling of the page
        await page.viewport(390, 844)
        await page.wait_until("window.innerWidth === 390", "the phone viewport")
        widths = await page.evaluate("[document.scrollingElement.scrollWidth, window.innerWidth]")
        assert widths[0] <= widths[1], f"the page is wider than a phone's screen: {widths}"
        phone = tmp_path / "dashboard-firefox-phone.png"
        await page.screenshot(phone)
        print(f"firefox phone screenshot: {phone}")
        assert phone.stat().st_size > 0
        assert page.errors == [], page.errors
