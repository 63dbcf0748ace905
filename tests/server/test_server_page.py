"""The web page in headless Chromium (Debian's chromium + chromium-driver): curve, query, slider, columns."""

import os
import shutil
from pathlib import Path

import pytest

from matryoshka import truncate
from matryoshka.index import exact_search
from matryoshka.server.search import IndexService

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver: run scripts/install-browser.sh",
)
QUERY = "A man is playing a guitar."
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1100",
]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def url(serve, encoder, index_dir):
    with serve(index=IndexService(index_dir, encoder)) as base:
        yield base


def top_ids(encoder, full_vectors, dim, k=10):
    _, rows = exact_search(truncate(encoder.encode_full([QUERY]), dim), truncate(full_vectors, dim), k)
    return [f"s{r}" for r in rows[0]]


def test_page_curve_query_and_slider(browser, url, encoder, full_vectors, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 120)
    browser.get(url + "/")
    # The retention curve: one point per dim, labelled with its dim.
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#curve circle")) == 7)
    dims = [c.get_attribute("data-dim") for c in browser.find_elements(By.CSS_SELECTOR, "#curve circle")]
    assert dims == ["8", "16", "32", "64", "128", "256", "384"]
    assert "STS-B test" in browser.find_element(By.ID, "curve-note").text

    browser.find_element(By.ID, "query").send_keys(QUERY, Keys.ENTER)
    column = {name: browser.find_element(By.ID, f"col-{name}") for name in ("slider", "funnel", "full")}
    wait.until(
        lambda d: column["slider"].get_attribute("data-ids") and column["funnel"].get_attribute("data-ids")
    )
    full_ids = top_ids(encoder, full_vectors, 384)
    assert column["full"].get_attribute("data-ids").split(",") == full_ids
    assert column["slider"].get_attribute("data-dims") == "32"
    assert column["slider"].get_attribute("data-ids").split(",") == top_ids(encoder, full_vectors, 32)
    assert "64 B/vector" in column["slider"].text and "768 B/vector" in column["full"].text
    assert "ms (server" in column["funnel"].text

    slider = browser.find_element(By.ID, "dim-slider")
    slider.send_keys(Keys.ARROW_LEFT, Keys.ARROW_LEFT)  # 32 -> 16 -> 8 dims
    wait.until(lambda d: column["slider"].get_attribute("data-dims") == "8")
    assert browser.find_element(By.ID, "dim-value").text == "8"
    ids_at_8 = top_ids(encoder, full_vectors, 8)
    assert column["slider"].get_attribute("data-ids").split(",") == ids_at_8
    assert column["slider"].find_element(By.TAG_NAME, "h3").text == "8 dims"
    # Results not in the full-dim top 10 are highlighted, and the full results it missed are listed.
    changed = [
        li.get_attribute("data-id") for li in column["slider"].find_elements(By.CSS_SELECTOR, "li.changed")
    ]
    assert changed == [i for i in ids_at_8 if i not in full_ids] and changed
    assert len(column["slider"].find_elements(By.CSS_SELECTOR, ".missed")) == len(changed)

    screenshot = Path(os.environ.get("MATRYOSHKA_SCREENSHOT", tmp_path / "page.png"))
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(screenshot))
