"""Take the README's picture of the studio: serve the shipped bundle, generate one video in headless chromium, inspect
one code of an in-between frame, and save the whole page.

    .venv/bin/python scripts/studio_screenshot.py [--ckpt checkpoints/shapes-tiny] [--out docs/studio.png]

Needs Debian's chromium and chromium-driver (scripts/test.sh installs them) and the dev extra (selenium).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.studio_server import StudioServer, chromium  # noqa: E402  (the tests' way of starting both)

PROMPT = "a red circle moves right slowly"
FRAME = 12  # an in-between of the first round: its temporal channel sees key frames 0, 8, 16 and frame 4
WIDTH = 1400


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, default=ROOT / "checkpoints" / "shapes-tiny")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "studio.png")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with tempfile.TemporaryDirectory() as directory:
        server = StudioServer(args.ckpt, Path(directory) / "studio.log")
        try:
            with chromium(WIDTH, 1000) as browser:
                wait = WebDriverWait(browser, 600)
                browser.get(server.url + "/")
                wait.until(lambda _: browser.find_element(By.ID, "fps").get_attribute("value"))
                browser.find_element(By.ID, "prompt").clear()
                browser.find_element(By.ID, "prompt").send_keys(PROMPT)
                browser.find_element(By.ID, "seed").clear()
                browser.find_element(By.ID, "seed").send_keys(str(args.seed))
                browser.find_element(By.ID, "generate").click()
                wait.until(lambda _: browser.execute_script("return document.querySelectorAll('#temporal canvas')"
                                                            ".length"))
                browser.find_element(By.ID, f"cell-{FRAME}").click()
                wait.until(lambda _: browser.find_element(By.ID, "origin").text.startswith(f"Frame {FRAME} "))
                select_code_on_the_object(browser)
                wait.until(lambda _: browser.execute_script("return arguments[0].readyState >= 2",
                                                            browser.find_element(By.ID, "player")))
                browser.execute_script("document.getElementById('player').pause();"
                                       "document.getElementById('player').currentTime = 1.5;")
                height = browser.execute_script("return document.documentElement.scrollHeight")
                browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {  # the whole page in one picture
                    "width": WIDTH, "height": height, "deviceScaleFactor": 1, "mobile": False})
                args.out.parent.mkdir(parents=True, exist_ok=True)
                browser.save_screenshot(str(args.out))
                print(f"wrote {args.out} ({browser.find_element(By.ID, 'status').text})")
        finally:
            server.stop()


def select_code_on_the_object(browser) -> None:
    """Click the code of the inspected frame that lies on the shape: the most saturated cell of the query canvas."""
    row, col, rows, cols = browser.execute_script("""
        const canvas = document.getElementById('query-canvas');
        const [rows, cols] = state.info.grid;
        const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        let best = [0, 0], score = -1;
        for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) {
          const x = Math.floor((c + 0.5) * canvas.width / cols), y = Math.floor((r + 0.5) * canvas.height / rows);
          const i = 4 * (y * canvas.width + x);
          const s = Math.max(data[i], data[i + 1], data[i + 2]) - Math.min(data[i], data[i + 1], data[i + 2]);
          if (s > score) { score = s; best = [r, c]; }
        }
        return [...best, rows, cols];""")
    browser.execute_script("""
        const canvas = document.getElementById('query-canvas'), box = canvas.getBoundingClientRect();
        const [row, col, rows, cols] = arguments;
        canvas.dispatchEvent(new MouseEvent('click', {clientX: box.left + (col + 0.5) * box.width / cols,
                                                      clientY: box.top + (row + 0.5) * box.height / rows}));
    """, row, col, rows, cols)
    from selenium.webdriver.support.ui import WebDriverWait
    WebDriverWait(browser, 120).until(lambda _: browser.execute_script(
        "return state.maps && state.maps.row === arguments[0] && state.maps.col === arguments[1]", row, col))


if __name__ == "__main__":
    main()
