"""The serve app in a real browser: Debian's headless Chromium driven by Selenium.

Upload a rendered song on the Separate page, wait for the result page, and check what a
listener gets: every audio element (mixture and stems) loads a playable source as long as
the song, every spectrogram image decodes, and the download-all link gives a zip with one
file per stem. The test saves screenshots to its tmp_path; with ``SEP_SCREENSHOTS=<folder>``
it also writes ``serve-separate.png`` and ``serve-result.png`` there
(``scripts/screenshots.sh`` refreshes the ones in docs/img).

Selenium is pointed at ``/usr/bin/chromedriver`` explicitly so that its driver manager never
tries to download one; without Debian's ``chromium`` and ``chromium-driver`` (installed by
scripts/setup.sh) the test is skipped.
"""

from __future__ import annotations

import io
import os
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import soundfile as sf

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: Seconds to wait for the separation (upload to finished result page).
RESULT_TIMEOUT = 60
#: Seconds to wait for the media elements and images of the result page to load.
LOAD_TIMEOUT = 20
#: Largest allowed difference between a player's duration and the song's, in seconds.
DURATION_TOLERANCE = 0.5
#: Screenshots are at most this tall (pixels), even when the page is longer.
MAX_SCREENSHOT_HEIGHT = 6000

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (os.path.exists(CHROMEDRIVER) and os.path.exists(CHROMIUM)),
        reason=f"needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}); "
        "scripts/setup.sh installs them as root",
    ),
]

# Waits until every <audio> of the page has its metadata (readyState >= 1) or an error, then
# answers one record per element. Elements left idle (preload="none") are asked to load.
MEDIA_SCRIPT = """
const done = arguments[arguments.length - 1];
const timeoutMs = arguments[0];
const start = Date.now();
const media = Array.from(document.querySelectorAll("audio"));
media.forEach((el) => {
  if (el.readyState < 1 && el.networkState !== 2) { el.preload = "metadata"; el.load(); }
});
function report() {
  return media.map((el) => ({
    id: el.id, stem: el.dataset.stem || null, cls: el.className, readyState: el.readyState,
    error: el.error ? `code ${el.error.code}: ${el.error.message}` : null,
    duration: el.duration, currentSrc: el.currentSrc,
  }));
}
(function poll() {
  const settled = media.every((el) => el.readyState >= 1 || el.error);
  if (settled || Date.now() - start > timeoutMs) { done(report()); } else { setTimeout(poll, 100); }
})();
"""

# Waits until every spectrogram <img> is complete, then answers their sizes.
IMAGES_SCRIPT = """
const done = arguments[arguments.length - 1];
const timeoutMs = arguments[0];
const start = Date.now();
const images = Array.from(document.querySelectorAll("img.spectrogram"));
(function poll() {
  if (images.every((im) => im.complete) || Date.now() - start > timeoutMs) {
    done(images.map((im) => ({stem: im.dataset.stem || null, src: im.currentSrc,
                               complete: im.complete, naturalWidth: im.naturalWidth})));
  } else { setTimeout(poll, 100); }
})();
"""

# Fetches a URL inside the page (the browser's own cookies) and answers status, size and
# the first bytes. Not from the cache: a player's range requests left partial (206) entries.
FETCH_SCRIPT = """
const done = arguments[arguments.length - 1];
fetch(arguments[0], {credentials: "same-origin", cache: "no-store"})
  .then(async (r) => {
    const bytes = new Uint8Array(await r.arrayBuffer());
    done({status: r.status, size: bytes.length, head: Array.from(bytes.slice(0, 4))});
  })
  .catch((e) => done({status: null, error: String(e)}));
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """One headless Chromium for the module (Selenium 4, the Debian driver, no downloads)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1600"):
        options.add_argument(arg)
    options.binary_location = CHROMIUM
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_script_timeout(LOAD_TIMEOUT + 10)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver, name: str, tmp_path: Path) -> Path:
    """Save the whole page (window grown to the document's height) as ``tmp_path/name``,
    and also into ``$SEP_SCREENSHOTS`` when that names a folder."""
    width = driver.get_window_size()["width"]
    driver.set_window_size(width, 400)  # the document is at least as tall as the viewport
    height, chrome = driver.execute_script(
        "return [document.documentElement.scrollHeight, window.outerHeight - window.innerHeight]"
    )
    driver.set_window_size(width, min(int(height) + int(chrome), MAX_SCREENSHOT_HEIGHT))
    path = tmp_path / name
    assert driver.save_screenshot(str(path)), f"screenshot {name} was not written"
    folder = os.environ.get("SEP_SCREENSHOTS")
    if folder:
        os.makedirs(folder, exist_ok=True)
        shutil.copyfile(path, os.path.join(folder, name))
    return path


def submit_song(driver, served, tmp_path: Path) -> None:
    """Open the Separate page, choose the song and the model, and submit the form."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    token = getattr(served, "token", None)
    # the token once in the query string; the app answers with the sep_token cookie
    driver.get(f"{served.url}/?token={token}" if token else f"{served.url}/")
    assert driver.find_element(By.ID, "separate-form"), "the Separate page has no #separate-form"
    driver.find_element(By.ID, "file").send_keys(os.path.abspath(served.song))
    Select(driver.find_element(By.ID, "model")).select_by_value(served.model)
    boxes = driver.find_elements(By.CSS_SELECTOR, "input[type=checkbox][name=stems]")
    assert sorted(b.get_attribute("value") for b in boxes) == sorted(served.stems)
    assert all(b.is_selected() for b in boxes), "every stem should be checked by default"
    screenshot(driver, "serve-separate.png", tmp_path)
    driver.find_element(By.ID, "submit").click()


def wait_for_result(driver) -> None:
    """Wait until the result page shows its stem players; fail with the page's error if any."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def finished(d):
        return d.find_elements(By.CSS_SELECTOR, "audio.stem-player") or d.find_elements(By.ID, "error")

    WebDriverWait(driver, RESULT_TIMEOUT, poll_frequency=0.25).until(
        finished, message=f"no stem players {RESULT_TIMEOUT} s after submitting ({driver.current_url})"
    )
    errors = driver.find_elements(By.ID, "error")
    assert not errors, f"the separation failed: {errors[0].text!r} ({driver.current_url})"


def check_players(driver, stems: list[str], duration: float) -> None:
    """Every audio element (mixture and stems) has a playable source as long as the song."""
    media = driver.execute_async_script(MEDIA_SCRIPT, LOAD_TIMEOUT * 1000)
    ids = [m["id"] for m in media]
    assert "player-mixture" in ids, f"no #player-mixture among the audio elements {ids}"
    players = [m for m in media if "stem-player" in m["cls"].split()]
    assert sorted(m["stem"] for m in players) == sorted(stems), players
    for m in media:
        name = m["stem"] or m["id"]
        assert m["error"] is None, f"audio {name}: media error {m['error']} ({m['currentSrc']})"
        assert m["currentSrc"], f"audio {name}: no current source"
        assert m["readyState"] >= 1, f"audio {name}: no metadata after {LOAD_TIMEOUT} s: {m}"
        assert abs(m["duration"] - duration) <= DURATION_TOLERANCE, (
            f"audio {name}: {m['duration']} s long, the song {duration:.3f} s"
        )


def check_spectrograms(driver, stems: list[str]) -> None:
    """Every spectrogram image has loaded and decoded."""
    images = driver.execute_async_script(IMAGES_SCRIPT, LOAD_TIMEOUT * 1000)
    assert images, "the result page has no img.spectrogram"
    assert set(stems) <= {im["stem"] for im in images}, f"spectrograms {images}, stems {stems}"
    for im in images:
        assert im["complete"] and im["naturalWidth"] > 0, f"spectrogram not loaded: {im}"


def check_downloads(driver, served) -> None:
    """Each stem's link and the download-all zip answer 200 in the page (the browser's
    cookie); the zip, fetched again with requests (the token), holds one file per stem."""
    from selenium.webdriver.common.by import By

    stems = served.stems
    links = driver.find_elements(By.CSS_SELECTOR, "a.download")
    assert sorted(a.get_attribute("data-stem") for a in links) == sorted(stems)
    suffixes = {Path(a.get_attribute("href").split("?")[0]).suffix for a in links}
    for a in links:
        got = driver.execute_async_script(FETCH_SCRIPT, a.get_attribute("href"))
        assert got["status"] == 200 and got["size"] > 0, f"download {a.get_attribute('href')}: {got}"
    href = driver.find_element(By.ID, "download-all").get_attribute("href")
    got = driver.execute_async_script(FETCH_SCRIPT, href)
    assert got["status"] == 200, f"download-all {href}: {got}"
    assert bytes(got["head"][:2]) == b"PK", f"download-all {href} is not a zip: {got}"

    response = served.client().get(href, timeout=30)
    assert response.status_code == 200, f"download-all {href}: {response.status_code} {response.text[:200]}"
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        names = archive.namelist()
        assert archive.testzip() is None, f"download-all {href}: a corrupt member"
    assert sorted(Path(n).stem for n in names) == sorted(stems), f"zip members {names}"
    assert {Path(n).suffix for n in names} == suffixes, f"zip members {names}, stem links {suffixes}"


def test_upload_play_and_download(browser, served, tmp_path: Path) -> None:
    """Upload a song, wait for the result page, check players, spectrograms and downloads."""
    from selenium.webdriver.common.by import By

    duration = sf.info(str(served.song)).duration
    submit_song(browser, served, tmp_path)
    wait_for_result(browser)
    assert "/jobs/" in browser.current_url, f"the form did not lead to a job page: {browser.current_url}"
    check_players(browser, served.stems, duration)
    check_spectrograms(browser, served.stems)
    elapsed = browser.find_element(By.ID, "elapsed").text
    assert any(ch.isdigit() for ch in elapsed), f"#elapsed shows no time: {elapsed!r}"
    check_downloads(browser, served)
    path = screenshot(browser, "serve-result.png", tmp_path)
    assert path.stat().st_size > 10_000, f"screenshot {path} is suspiciously small"
