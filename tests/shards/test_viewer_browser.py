"""The viewer in a real browser: headless Chromium (the Debian package, driven by selenium) on the site of a real
pipeline run with captions and QA from the fake LLM server, and on a run with markup planted in its texts.

Screenshots of the index and a sample page are kept in the test's tmp dir (the path is printed).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fixtures.videos import SynthVideo, make_video
from pipeline.run import run_pipeline
from shards.reader import open_run
from shards.viewer import build_site
from tests.dense_caption.fake_llm import FakeLLM, text_of
from tests.dense_caption.test_pipeline_faults import llm_config
from tests.shards.viewer_run import PLANTED, make_run

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
MARKUP_NAME = "odd<img src=q onerror=window.PWNED=3>"  # a source file name that is markup (no slash: a valid name)


@pytest.fixture(scope="module")
def browser():
    binary = next((shutil.which(b) for b in CHROMIUM if shutil.which(b)), None)
    driver_path = shutil.which("chromedriver")
    if not binary or not driver_path:
        pytest.fail("Chromium and chromedriver are missing: scripts/install.sh installs them (Debian packages)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000",
                "--allow-file-access-from-files"):  # fmt: skip
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)  # explicit paths: selenium downloads nothing
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def llm_run(tmp_path_factory, ray_local) -> Path:
    """Three videos through the pipeline with captions and QA; the fake server breaks the 17 s one (a reject)."""
    videos = tmp_path_factory.mktemp("view_videos")
    for name, d in (("clip_12s", 12), ("clip_17s", 17), (MARKUP_NAME, 23)):
        make_video(SynthVideo(name, duration_s=d, width=160, height=90, fps=10, audio=False), videos)
    out = tmp_path_factory.mktemp("view_run") / "out"

    def fault(n, body):
        return "malformed" if "lasts 00:17" in text_of(body) else None

    with FakeLLM(fault) as fake:
        run_pipeline(llm_config(videos, out, fake.url))
    return out


def ids(driver, css: str) -> list:
    return driver.find_elements("css selector", css)


def test_index_filters_and_a_sample_page_shows_strip_timeline_and_evidence(browser, llm_run, tmp_path):
    from selenium.webdriver.support.ui import Select

    done = build_site(open_run(llm_run), llm_run / "viewer")
    assert done["rows"] == 3 and done["pages"] == 3
    browser.get((llm_run / "viewer" / "index.html").as_uri())
    rows = ids(browser, "#samples tbody tr")
    assert len(rows) == 3 and browser.find_element("id", "count").text == "3 of 3 shown"
    assert len(ids(browser, "#samples tbody tr.ok img")) == 2  # thumbnails of the accepted samples
    assert browser.execute_script("return window.PWNED") is None  # the markup file name stayed text
    assert any(MARKUP_NAME in r.text for r in rows)

    Select(browser.find_element("id", "f-reason")).select_by_visible_text("llm_bad_json")
    rows = ids(browser, "#samples tbody tr")
    assert len(rows) == 1 and "rejected: llm_bad_json (caption)" in rows[0].text
    assert "reason=llm_bad_json" in browser.current_url  # the filtered view is a link
    Select(browser.find_element("id", "f-reason")).select_by_visible_text("accepted")
    Select(browser.find_element("id", "f-qa")).select_by_visible_text("temporal")
    rows = ids(browser, "#samples tbody tr")
    assert len(rows) == 2 and all(r.get_attribute("class") == "ok" for r in rows)
    browser.find_element("css selector", 'th[data-sort="d"]').click()
    browser.find_element("css selector", 'th[data-sort="d"]').click()  # longest first
    assert rows and ids(browser, "#samples tbody tr")[0].text.split()[0].startswith("odd")
    browser.save_screenshot(str(tmp_path / "index.png"))

    ids(browser, "#samples tbody tr a")[0].click()
    frames = ids(browser, "#strip .frame img")
    assert len(frames) == 8 and all(browser.execute_script("return arguments[0].naturalWidth", f) > 0 for f in frames)
    assert [f.text for f in ids(browser, "#strip figcaption")][0] == "0:00.0"
    for level in ("video", "segment", "clip"):
        assert ids(browser, f'#timeline .track[data-level="{level}"] .cap'), level
    clips = ids(browser, ".cap-clip")
    assert len(clips) >= 2 and clips[0].location["x"] < clips[1].location["x"]  # placed along the time axis
    pairs = ids(browser, ".qa[data-start]")
    assert pairs and ids(browser, ".qa.active .evidence")  # the first pair is marked on load
    last = pairs[-1]
    last.click()
    marked = [int(f.get_attribute("data-i")) for f in ids(browser, "#strip .frame.hl")]
    expect = [int(i) for i in last.get_attribute("data-frames").split()]
    assert marked == expect and marked, (marked, expect)
    assert "active" in last.get_attribute("class") and ids(browser, ".qa.active .evidence")[0].size["width"] > 0
    browser.save_screenshot(str(tmp_path / "sample.png"))
    print(f"screenshots: {tmp_path / 'index.png'} {tmp_path / 'sample.png'}")
    assert (tmp_path / "sample.png").read_bytes()[:4] == b"\x89PNG"


def test_planted_markup_shows_as_text_and_never_runs(browser, tmp_path):
    run = make_run(tmp_path / "run")
    build_site(run, tmp_path / "site")
    for page in ("index.html", "pages/vid000.html", "pages/reject-bad001.html"):
        browser.get((tmp_path / "site" / page).as_uri())
        assert browser.execute_script("return window.PWNED") is None, page
        assert "PWNED" in browser.find_element("tag name", "body").text, page  # shown, as text
    assert PLANTED in browser.find_element("css selector", "pre.detail").text
    browser.get((tmp_path / "site" / "pages" / "vid003.html").as_uri())  # 310 s; the temporal pair spans 186-279 s
    browser.find_element("css selector", '.qa[data-start="186.0"]').click()
    assert [int(f.get_attribute("data-i")) for f in ids(browser, "#strip .frame.hl")] == [5, 6, 7]
