"""Helpers for the studio's tests: start `python -m cogvideo_lite.studio` as a user would, on a free port, and talk to
it over real HTTP; start Debian's chromium headless through its chromedriver (never a downloaded browser)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STARTUP_SECONDS = 120  # importing torch and loading a bundle on a busy 2-core machine
CHROMIUM = os.environ.get("STUDIO_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("STUDIO_CHROMEDRIVER", "/usr/bin/chromedriver")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


class StudioServer:
    """A studio server in a subprocess; its output goes to `log` (a file, so that a full pipe never blocks it)."""

    def __init__(self, bundle: Path, log: Path, *extra: str) -> None:
        self.log = log
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        with open(log, "w") as handle:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cogvideo_lite.studio", "--ckpt", str(bundle), "--port", "0", *extra],
                cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, env=environment)
        self.url = self._wait_for_address()

    def _wait_for_address(self) -> str:
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if match := re.search(r"studio: serving .* at (http://\S+/)", self.log.read_text()):
                return match.group(1).rstrip("/")
            if self.process.poll() is not None:
                raise AssertionError(f"the studio exited {self.process.returncode}:\n{self.log.read_text()}")
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"the studio did not start in {STARTUP_SECONDS} s:\n{self.log.read_text()}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def request(self, path: str, body: bytes | dict | None = None, timeout: float = 300) -> tuple[int, bytes, dict]:
        """(status, body, headers) of a GET, or of a POST when `body` is given (a dict is sent as JSON)."""
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        request = urllib.request.Request(self.url + path, data=data, method="GET" if data is None else "POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read(), dict(response.headers)
        except urllib.error.HTTPError as error:
            return error.code, error.read(), dict(error.headers)

    def json(self, path: str, body: bytes | dict | None = None, timeout: float = 300) -> tuple[int, dict]:
        status, content, _ = self.request(path, body, timeout)
        return status, json.loads(content)


def chromium_missing() -> str | None:
    """Why the browser test cannot run here, or None. scripts/test.sh installs both from Debian packages."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not shutil.which(path):
            return f"{path} is missing (apt-get install chromium chromium-driver; scripts/test.sh does it)"
    return None


@contextmanager
def chromium(width: int = 1400, height: int = 1400) -> Iterator:
    """A selenium driver for Debian's headless chromium, with a fresh profile that goes with it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="studio-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        try:
            yield driver
        finally:
            driver.quit()
