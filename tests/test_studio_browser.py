"""The studio's page in a real headless browser (Debian's chromium through selenium and chromedriver): it loads,
refuses an empty prompt with the server's message, generates a video from a typed prompt, plays it, and draws the
attention heat maps and the gates."""

from __future__ import annotations

import pytest

from tests.studio_server import StudioServer, chromium, chromium_missing

PROMPT = "a blue square moves up quickly"
WAIT_SECONDS = 180

# Pixels of a canvas that differ from its background (the page's dark fill): > 0 once something is drawn.
DRAWN_PIXELS = """
const canvas = document.querySelector(arguments[0]);
if (!canvas) return 0;
const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
let drawn = 0;
for (let i = 0; i < data.length; i += 4)
  if (data[i + 3] > 0 && !(data[i] === 17 && data[i + 1] === 24 && data[i + 2] === 39)) drawn++;
return drawn;
"""


@pytest.fixture(scope="module")
def studio(bundle, tmp_path_factory):
    server = StudioServer(bundle, tmp_path_factory.mktemp("studio") / "studio.log")
    yield server
    server.stop()


@pytest.mark.skipif(chromium_missing() is not None, reason=str(chromium_missing()))
def test_the_page_generates_plays_and_draws_the_attention_maps(studio):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with chromium() as browser:
        wait = WebDriverWait(browser, WAIT_SECONDS)
        browser.get(studio.url + "/")
        wait.until(lambda _: browser.find_element(By.ID, "fps").get_attribute("value") == "1")
        prompt = browser.find_element(By.ID, "prompt")
        prompt.clear()
        browser.find_element(By.ID, "generate").click()
        message = browser.find_element(By.ID, "message")
        wait.until(lambda _: message.is_displayed())
        assert message.text == "prompt is empty; give a caption like 'a red circle moves left slowly'"

        prompt.send_keys(PROMPT)
        browser.find_element(By.ID, "generate").click()
        wait.until(lambda _: browser.execute_script("return document.querySelectorAll('#temporal canvas').length"))
        assert not message.is_displayed()
        video = browser.find_element(By.ID, "player")
        assert video.get_attribute("src").endswith(".mp4")
        wait.until(lambda _: browser.execute_script("return arguments[0].readyState >= 2", video))  # it plays
        assert browser.find_element(By.ID, "status").text.startswith("Done: 33 frames")
        assert len(browser.find_elements(By.CSS_SELECTOR, "#hierarchy .cell img")) == 33
        assert browser.find_element(By.ID, "gif-link").get_attribute("href").endswith(".gif")
        for canvas in ("#query-canvas", "#spatial canvas", "#temporal canvas", "#gate-plots canvas"):
            assert browser.execute_script(DRAWN_PIXELS, canvas) > 0, canvas
        words = [token.text.split("\n")[0] for token in browser.find_elements(By.CSS_SELECTOR, "#spatial .token")]
        assert words[:-1] == PROMPT.split() and words[-1].startswith("fps")
        origin = browser.find_element(By.ID, "origin").text
        assert origin.startswith("Frame 1 was drawn in interpolation round 3 (to 8 fps)")

        browser.find_elements(By.CSS_SELECTOR, "#hierarchy .cell.key")[2].click()  # key frame 2 = frame 16
        wait.until(lambda _: browser.find_element(By.ID, "origin").text.startswith("Frame 16 is key frame 3 of 5"))
        assert browser.execute_script(DRAWN_PIXELS, "#temporal canvas") > 0
