"""A real headless Chromium, driven over the DevTools protocol (no browser download, no extra package).

Tests use it to look at the Ray dashboard as a person would: set the
dashboard's auth cookie, open a page, wait until some text shows, save a
screenshot. Only loopback pages; the browser is ended by its own handle.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-port=0", "--window-size=1600,1000"]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def snapshot(url: str, screenshot: Path, cookies: dict[str, str], wait_for: list[str],
             timeout_s: float = 60.0) -> str:
    """Open ``url`` with ``cookies``; once every string in ``wait_for`` is on the page
    (or the time is up), save a PNG and return the page's visible text."""
    # Chromium's helper processes may still be writing the profile as it exits.
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        proc = subprocess.Popen([chromium(), *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            port = _devtools_port(proc, timeout_s)
            pages = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
            ws_url = next(p["webSocketDebuggerUrl"] for p in pages if p.get("type") == "page")
            return asyncio.run(_drive(ws_url, url, screenshot, cookies, wait_for, timeout_s))
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def _devtools_port(proc: subprocess.Popen, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            raise RuntimeError(f"chromium exited with {proc.returncode} before DevTools came up")
        match = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
        if match:
            return int(match.group(1))
    raise TimeoutError("chromium's DevTools did not come up")


async def _drive(ws_url, url, screenshot, cookies, wait_for, timeout_s) -> str:
    import aiohttp  # a Ray dependency; its websocket client speaks DevTools

    ids = itertools.count(1)
    async with aiohttp.ClientSession() as session, session.ws_connect(ws_url, max_msg_size=0) as ws:
        async def call(method: str, **params):
            msg_id = next(ids)
            await ws.send_json({"id": msg_id, "method": method, "params": params})
            async for msg in ws:
                data = json.loads(msg.data)
                if data.get("id") == msg_id:
                    if "error" in data:
                        raise RuntimeError(f"{method}: {data['error']}")
                    return data.get("result", {})
            raise RuntimeError("DevTools connection closed")

        await call("Network.enable")
        for name, value in cookies.items():
            await call("Network.setCookie", name=name, value=value, url=url)
        await call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout_s
        text = ""
        while time.monotonic() < deadline:
            result = await call("Runtime.evaluate", expression="document.body ? document.body.innerText : ''",
                                returnByValue=True)
            text = result.get("result", {}).get("value", "") or ""
            if all(s in text for s in wait_for):
                break
            await asyncio.sleep(0.5)
        shot = await call("Page.captureScreenshot", format="png")
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        return text
