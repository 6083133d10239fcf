"""Headless Chromium driven over the DevTools protocol: open a page, wait for what a user waits for, click, screenshot.

`chromium --dump-dom` cannot click; the asset pages need one click to open a long Markdown entry.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import websockets


class Page:
    def __init__(self, ws):
        self._ws, self._id = ws, 0

    async def send(self, method: str, **params):
        self._id += 1
        await self._ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(await self._ws.recv())
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    async def js(self, expression: str):
        result = await self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 60):
        """The value of `expression` once it is truthy (the page renders after its GraphQL queries answer)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = await self.js(expression)
            if value:
                return value
            await asyncio.sleep(0.5)
        raise TimeoutError(f"not true within {timeout}s: {expression}")

    async def open(self, url: str) -> None:
        await self.send("Page.navigate", url=url)

    async def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode((await self.send("Page.captureScreenshot", format="png"))["data"]))


def run_in_chromium(chromium: str, port: int, script) -> object:
    """Start a headless Chromium, run `await script(page)` against its first tab, stop it; returns what `script` returns."""

    async def main():
        # Chromium's helper processes can still write to the profile for a moment after it exits
        with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
            proc = subprocess.Popen(
                [
                    chromium,
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    f"--remote-debugging-port={port}",
                    f"--user-data-dir={profile}",
                    "--window-size=1600,1100",
                    "about:blank",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                deadline = time.time() + 60
                while True:
                    try:
                        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=5) as response:
                            targets = json.load(response)
                        break
                    except OSError:
                        if time.time() > deadline:
                            raise
                        await asyncio.sleep(0.5)
                tab = next(t for t in targets if t["type"] == "page")
                async with websockets.connect(tab["webSocketDebuggerUrl"], max_size=64 * 2**20) as ws:
                    page = Page(ws)
                    await page.send("Page.enable")
                    return await script(page)
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                proc.wait(timeout=30)

    return asyncio.run(main())


def stop_process_group(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Stop a server started with `start_new_session=True` and everything it spawned: SIGTERM, then SIGKILL. A group
    that has already ended (a server that failed to start) has nothing to stop: its own error is the one to show."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
