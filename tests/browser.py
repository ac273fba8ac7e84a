"""Headless Chromium for tests: find it, drive it through chromedriver, serve `mlflow ui`.

Chromium is driven through chromedriver's W3C WebDriver HTTP protocol with urllib (a dozen
endpoints), so the browser tests need only the Debian packages `chromium` and `chromium-driver`:
no selenium and its websocket/trio dependencies. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

INSTALL_HINT = "apt-get install chromium chromium-driver"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
)
WINDOW = (1600, 1200)
# /usr/bin/chromium is Debian's shell launcher; the binary beside it starts the same browser
# without the launcher's environment probing.
CHROMIUM_CANDIDATES = ("/usr/lib/chromium/chromium", "chromium", "chromium-browser")
DRIVER_CANDIDATES = ("/usr/lib/chromium/chromedriver", "chromedriver")


def _which(names: tuple[str, ...]) -> str | None:
    for name in names:
        path = name if os.path.isabs(name) and os.access(name, os.X_OK) else shutil.which(name)
        if path:
            return path
    return None


def find_chromium() -> tuple[str, str] | None:
    """(chromium binary, chromedriver) or None when either is not installed."""
    browser, driver = _which(CHROMIUM_CANDIDATES), _which(DRIVER_CANDIDATES)
    return (browser, driver) if browser and driver else None


def require_chromium() -> tuple[str, str]:
    found = find_chromium()
    if found is None:
        pytest.skip(f"chromium not installed: {INSTALL_HINT}")
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_json(method: str, url: str, body: dict | None = None, timeout: float = 60) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:  # WebDriver errors carry a JSON explanation
        raise RuntimeError(f"{method} {url}: {err.code} {err.read()[:500]!r}") from None


def wait_http(
    url: str, timeout_s: float, process: subprocess.Popen | None = None, what: str = "server"
) -> None:
    """Poll `url` until it answers 200; fail with `what` and the elapsed time otherwise."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode} before answering")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{what} did not answer {url} within {timeout_s:.0f} s")


def stop_process(process: subprocess.Popen, timeout_s: float = 10) -> None:
    """Stop a process started with start_new_session=True and everything in its group: SIGTERM,
    then SIGKILL for whatever is left (servers' workers can outlive their parent)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout_s)


class Browser:
    """One WebDriver session of headless Chromium."""

    def __init__(self, driver_url: str, session_id: str):
        self.url = f"{driver_url}/session/{session_id}"

    def get(self, url: str) -> None:
        http_json("POST", f"{self.url}/url", {"url": url})

    def script(self, source: str, *args: Any) -> Any:
        """Run a JavaScript function body (use `return`) in the page; returns its JSON value."""
        body = {"script": source, "args": list(args)}
        return http_json("POST", f"{self.url}/execute/sync", body)["value"]

    def wait_for(self, source: str, timeout_s: float, what: str, *args: Any) -> Any:
        """Poll a script until it returns something truthy; TimeoutError naming `what` otherwise
        (with the page's visible text, to see what rendered instead)."""
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            value = self.script(source, *args)
            if value:
                return value
            time.sleep(0.25)
        text = self.script("return document.body ? document.body.innerText : ''")[:1500]
        raise TimeoutError(f"{what} not shown within {timeout_s:.0f} s; page text: {text!r}")

    def dom(self) -> str:
        """The rendered DOM (after scripts ran), not the served HTML."""
        return self.script("return document.documentElement.outerHTML")

    def text(self) -> str:
        return self.script("return document.body.innerText")

    def screenshot(self, path: Path, full_page: bool = True) -> Path:
        """Save a PNG; with `full_page` the window grows to the page's height for the shot (for
        static pages: a single-page app fills any window) and shrinks back after."""
        if full_page:
            height = self.script("return document.documentElement.scrollHeight")
            self._resize(WINDOW[0], max(WINDOW[1], min(int(height) + 100, 12000)))
        png = base64.b64decode(http_json("GET", f"{self.url}/screenshot")["value"])
        if full_page:
            self._resize(*WINDOW)
        Path(path).write_bytes(png)
        return Path(path)

    def _resize(self, width: int, height: int) -> None:
        http_json("POST", f"{self.url}/window/rect", {"width": width, "height": height})


def _close_log(log, keep: bool) -> None:
    """Logs stay in the temp folder only when something failed (their path is in the error)."""
    log.close()
    if not keep:
        Path(log.name).unlink(missing_ok=True)


@contextlib.contextmanager
def headless_chromium(timeout_s: float = 60) -> Iterator[Browser]:
    """Start chromedriver on a free loopback port and one headless Chromium session with a fresh
    profile; both are stopped on exit."""
    browser_bin, driver_bin = require_chromium()
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="chromedriver-", suffix=".log", delete=False)
    driver = subprocess.Popen(
        [driver_bin, f"--port={port}", "--allowed-ips=127.0.0.1"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    driver_url = f"http://127.0.0.1:{port}"
    session, ok = None, False
    try:
        wait_http(f"{driver_url}/status", timeout_s, driver, what=f"chromedriver (log {log.name})")
        window = f"--window-size={WINDOW[0]},{WINDOW[1]}"
        args = [*CHROMIUM_FLAGS, window, f"--user-data-dir={profile}"]
        options = {"binary": browser_bin, "args": args}
        capabilities = {
            "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": options,
                "pageLoadStrategy": "normal",
            }
        }
        session = http_json(
            "POST", f"{driver_url}/session", {"capabilities": capabilities}, timeout=timeout_s
        )["value"]["sessionId"]
        yield Browser(driver_url, session)
        ok = True
    finally:
        if session is not None:
            with contextlib.suppress(Exception):
                http_json("DELETE", f"{driver_url}/session/{session}", timeout=10)
        stop_process(driver)
        shutil.rmtree(profile, ignore_errors=True)
        _close_log(log, keep=not ok)


@contextlib.contextmanager
def mlflow_ui(backend_store_uri: str, timeout_s: float = 60) -> Iterator[str]:
    """Serve `mlflow ui` for a store on 127.0.0.1:<free port>; yields its base URL and always
    stops the server (and its workers) on exit. One worker: the default four each import mlflow,
    which takes half a minute on a small CI machine."""
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="mlflow-ui-", suffix=".log", delete=False)
    command = [
        str(mlflow_bin),
        "ui",
        "--backend-store-uri",
        backend_store_uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    # The UI needs no background job runner (it would start eight more Python processes).
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    base, ok = f"http://127.0.0.1:{port}", False
    try:
        wait_http(f"{base}/health", timeout_s, server, what=f"mlflow ui (log {log.name})")
        yield base
        ok = True
    finally:
        stop_process(server)
        _close_log(log, keep=not ok)
