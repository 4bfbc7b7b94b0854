"""The atlas page in a real browser: Debian's chromium, headless, driven by Selenium, offline.

One atlas is built from a small recording (a random ResNet-18 looking at 16 generated
16-pixel gratings; ``layer3``, 256 units, kept in full and as a summary, ``layer4``
mean-pooled) with its unit table cut into three chunks, and its ``index.html`` is opened
from ``file://`` as a user would open it. The tests prove that:

- the sites view lists every site of the manifest, each a link to its unit table;
- a permalink ``#<site>/<unit>`` opens the unit, and its top and bottom stimuli are, rank by
  rank, those of ``ur.load_summary`` (flat C-order unit index over the summary's unit dims),
  as many as the atlas stores, each with its receptive field drawn;
- a click on a column header sorts the units of every chunk as numpy sorts the same values
  (ascending, then descending; NaN last, ties by unit), 100 rows per page;
- the channel filter keeps exactly the units of the channels typed (numbers, ranges, lists);
- an unknown site or unit gives a one-line message and the sites view;
- a stimulus file named like markup (``<img src=x onerror=...>.png``) is shown as text;
- a screenshot of the unit view is a real PNG, and the browser's console holds no error.

Marked slow (a browser's start and the 16 images' recording take about 12 s): CI runs them
with the other slow tests. Without selenium, ``/usr/bin/chromium`` or ``/usr/bin/chromedriver``
the tests skip, unless ``UNITREC_REQUIRE_BROWSER=1`` (CI) makes them fail. Nothing is downloaded: Selenium Manager is
kept offline and the system chromedriver is given.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

import unitrec as ur
from tests.web.test_atlas import read_js, table

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SITE = "layer3"
TABLE_CHUNK = 100  # the builder's 5,000 would give layer3's 256 units a single table chunk
HOSTILE = "<img src=x onerror=alert(1)>.png"  # a stimulus file name that is markup

pytestmark = pytest.mark.slow


def _why_no_browser() -> str | None:
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (pip install selenium)"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.is_file():
            return f"{path} is missing (apt install chromium chromium-driver)"
    return None


@pytest.fixture(scope="module", autouse=True)
def _browser_available() -> None:
    """Skip the module (or fail it under UNITREC_REQUIRE_BROWSER=1) before anything is built."""
    reason = _why_no_browser()
    if reason:
        if os.environ.get("UNITREC_REQUIRE_BROWSER") == "1":
            pytest.fail(f"UNITREC_REQUIRE_BROWSER=1 but {reason}", pytrace=False)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def recording(tmp_path_factory, zoo) -> Path:
    from unitrec.anatomy.preprocess import build_transform

    tmp = tmp_path_factory.mktemp("atlas_browser")
    ur.stimuli.gratings(tmp / "stimuli", size=16, orientations=[0, 45, 90, 135], spatial_frequencies=[2, 4],
                        phases=[0, 180])
    first = "grating_ori000_sf02_ph000_c100.png"  # renamed to markup: stimulus row 0 (sorted first)
    (tmp / "stimuli" / first).rename(tmp / "stimuli" / HOSTILE)
    metadata = tmp / "stimuli" / "metadata.csv"
    metadata.write_text(metadata.read_text().replace(first, HOSTILE))
    layers = [{"name": SITE, "keep": "both", "top": 5}, {"name": "layer4", "pool": "mean"}]
    return ur.record(zoo("resnet18"), tmp / "stimuli", layers, tmp / "acts.h5", batch_size=16, progress=False,
                     transform=build_transform({"resize": None, "crop": None, "normalize": "imagenet"}))


@pytest.fixture(scope="module")
def index(recording, tmp_path_factory) -> Path:
    """The atlas's index.html, its unit table in chunks of TABLE_CHUNK units."""
    from unitrec.web import data

    out = tmp_path_factory.mktemp("atlas_browser_out") / "atlas"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(data, "TABLE_CHUNK", TABLE_CHUNK)
        return ur.atlas(recording, out, progress=False)


@pytest.fixture(scope="module")
def manifest(index) -> dict:
    return read_js(index.parent / "data" / "manifest.js")[0]


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    """One headless chromium for the module, with the console log kept."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1280,900",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SE_OFFLINE", "true")  # Selenium Manager must not look for a driver online
        browser = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield browser
    finally:
        browser.quit()


@pytest.fixture(autouse=True)
def _console(request):
    """Each test's console entries only: drain what earlier tests left."""
    if "driver" in request.fixturenames:
        request.getfixturevalue("driver").get_log("browser")


# ----------------------------------------------------------------------------- helpers

def _site(manifest: dict, name: str) -> dict:
    return next(s for s in manifest["sites"] if s["name"] == name)


def _table(index: Path, site: dict) -> dict[str, np.ndarray]:
    """A site's whole unit table as the page has it, every chunk concatenated; NaN for null."""
    return {name: np.array([np.nan if v is None else v for v in values])
            for name, values in table(index.parent, site).items()}


def _open(driver, index: Path, route: str, ready: str) -> None:
    """Load the page afresh at ``#route`` and wait for the CSS selector `ready`."""
    driver.get("about:blank")  # a hash change alone would keep the last test's page and its state
    driver.get(f"{index.as_uri()}#{route}")
    _wait(driver, lambda d: d.find_elements("css selector", ready), f"{ready} at #{route}")


def _wait(driver, condition, what: str, timeout: float = 10):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition, message=f"waiting for {what}")


def _rows(driver) -> list[int]:
    """The units of the table's rows, in order (one script call, not one round trip per row)."""
    return driver.execute_script(
        "return [...document.querySelectorAll('#unit-table tbody tr[data-unit]')].map(tr => +tr.dataset.unit)")


def _severe(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def _figures(driver, strip: str) -> list[tuple[int, str, float]]:
    return [(int(f.get_attribute("data-index")), f.get_attribute("data-label"), float(f.get_attribute("data-response")))
            for f in driver.find_elements("css selector", f"#{strip} figure.stimulus")]


# ----------------------------------------------------------------------------- tests

def test_the_sites_view_lists_every_site_with_a_link_to_its_table(driver, index, manifest):
    _open(driver, index, "", ".site-card")
    cards = driver.find_elements("css selector", ".site-card")
    assert [c.get_attribute("data-site") for c in cards] == [s["name"] for s in manifest["sites"]]
    for card, site in zip(cards, manifest["sites"]):
        link = card.find_element("css selector", "h2 a")
        assert link.text == site["name"] and link.get_attribute("href").endswith(f"#{site['name']}")
        assert f"{site['n_units']:,}" in card.text and site["keep"] in card.text
    assert driver.find_element("id", "notice").is_displayed() is False
    assert not _severe(driver)


def test_a_permalink_shows_the_units_top_and_bottom_stimuli_of_its_summary(driver, index, manifest, recording):
    site = _site(manifest, SITE)
    summary = ur.load_summary(recording, SITE)
    unit_dims = [d for d in summary["top_stimulus"].dims if d != "rank"]
    assert unit_dims == site["dims"]
    flat = {name: summary[name].transpose("rank", *unit_dims).values.reshape(summary.sizes["rank"], -1)
            for name in ("top_stimulus", "top_index", "top_response", "bottom_stimulus", "bottom_index",
                         "bottom_response")}
    maxima = summary["max"].values.reshape(-1)
    ranks = site["ranks"]
    assert 0 < ranks <= summary.sizes["rank"]
    # the strongest unit, a silent one (all ties) if there is one, and the last unit
    units = sorted({int(np.argmax(maxima)), int(np.flatnonzero(maxima == 0)[0]) if (maxima == 0).any() else 0,
                    site["n_units"] - 1})
    for unit in units:
        _open(driver, index, f"{SITE}/{unit}", f'#unit-view[data-unit="{unit}"] #top-stimuli figure.stimulus')
        for side in ("top", "bottom"):
            shown = _figures(driver, f"{side}-stimuli")
            assert [label for _, label, _ in shown] == list(flat[f"{side}_stimulus"][:ranks, unit]), (side, unit)
            assert [row for row, _, _ in shown] == list(flat[f"{side}_index"][:ranks, unit]), (side, unit)
            np.testing.assert_allclose([r for _, _, r in shown], flat[f"{side}_response"][:ranks, unit], rtol=1e-6)
        coords = np.unravel_index(unit, site["shape"])
        title = driver.find_element("id", "unit-title").text
        assert title == f"{SITE} · " + ", ".join(f"{d} {c}" for d, c in zip(site["dims"], coords))
        assert driver.find_element("id", "permalink").get_attribute("href") == f"{index.as_uri()}#{SITE}/{unit}"
        # every stimulus shows its thumbnail, with the receptive field drawn on it
        loaded = "return [...document.querySelectorAll('figure.stimulus img')].every(i => i.complete && i.naturalWidth)"
        _wait(driver, lambda d: d.execute_script(loaded), "the thumbnails")
        for figure in driver.find_elements("css selector", "figure.stimulus"):
            assert figure.find_elements("css selector", "img") and figure.find_elements("css selector", "div.rf")
    assert driver.find_elements("css selector", "#tuning circle.point")  # orientation tuning curve
    assert not _severe(driver)


@pytest.mark.parametrize("column, has", [("max", "ties"), ("sparseness", "NaN")])
def test_a_header_click_sorts_every_chunk_ascending_then_descending(driver, index, manifest, recording, column, has):
    site = _site(manifest, SITE)
    assert site["n_table_chunks"] >= 2, "the table should span chunks here (is web.data.TABLE_CHUNK still used?)"
    table = _table(index, site)
    values = table[column]
    # silent units: max 0 (ties, ranked by unit) and sparseness NaN (last, either way)
    assert (len(np.unique(values)) < len(values)) if has == "ties" else np.isnan(values).any()
    summary = ur.load_summary(recording, SITE)[column].values.reshape(-1)
    np.testing.assert_allclose(values, summary, rtol=1e-6)  # the page sorts the summary's values
    _open(driver, index, SITE, "#unit-table tbody tr[data-unit]")
    assert driver.find_element("id", "unit-count").text == f"{site['n_units']:,} of {site['n_units']:,} units"
    assert _rows(driver) == list(range(100))
    header = driver.find_element("css selector", f'#unit-table th[data-column="{column}"]')
    for direction, sign in (("ascending", 1), ("descending", -1)):
        header.click()
        _wait(driver, lambda d: header.get_attribute("aria-sort") == direction, f"aria-sort={direction}")
        order = table["unit"][np.argsort(sign * values, kind="stable")].astype(int)  # NaN last, ties by unit
        shown = _rows(driver)
        while not driver.find_element("id", "page-next").get_property("disabled"):  # every page, 100 rows each
            assert len(shown) % 100 == 0
            driver.find_element("id", "page-next").click()
            shown += _rows(driver)
        assert shown == list(order), direction
        driver.find_element("id", "page-prev").click()  # back from the last page to the one before
        last = (len(order) - 1) // 100 * 100
        assert _rows(driver) == list(order[last - 100:last])
    assert not _severe(driver)


def test_the_channel_filter_keeps_the_units_of_the_channels_typed(driver, index, manifest):
    site = _site(manifest, SITE)
    table = _table(index, site)
    _open(driver, index, SITE, "#unit-table tbody tr[data-unit]")
    box = driver.find_element("id", "filter-channel")
    for text, channels in (("7", {7}), ("3, 10-12", {3, 10, 11, 12}), ("200,5", {5, 200})):
        box.clear()
        box.send_keys(text)
        wanted = table["unit"][np.isin(table["channel"], list(channels))].astype(int)
        assert _rows(driver) == list(wanted), text  # in unit order: no sort chosen
        assert driver.find_element("id", "unit-count").text == f"{len(wanted)} of {site['n_units']:,} units"
    box.clear()
    box.send_keys("five")
    assert box.get_attribute("aria-invalid") == "true"
    assert len(_rows(driver)) == 100  # an unreadable filter filters nothing
    assert not _severe(driver)


@pytest.mark.parametrize("route, words", [(f"{SITE}/999999", ["999999", SITE]), ("no-such-site/3", ["no-such-site"])])
def test_an_unknown_unit_or_site_gives_a_message_and_the_sites_view(driver, index, route, words):
    _open(driver, index, route, ".site-card")
    notice = driver.find_element("id", "notice")
    assert notice.is_displayed() and all(w in notice.text for w in words)
    assert not driver.find_elements("id", "unit-view")


def test_a_stimulus_named_like_markup_is_shown_as_text(driver, index, manifest, recording):
    summary = ur.load_summary(recording, SITE)
    assert summary["stimulus"].values[0] == HOSTILE
    ranks = _site(manifest, SITE)["ranks"]
    top = summary["top_index"].transpose("rank", ...).values.reshape(summary.sizes["rank"], -1)[:ranks]
    unit = int(np.flatnonzero((top == 0).any(axis=0))[0])  # a unit with stimulus 0 among its top ranks
    _open(driver, index, f"{SITE}/{unit}", f'#unit-view[data-unit="{unit}"] #top-stimuli figure.stimulus')
    figure = driver.find_element("css selector", '#top-stimuli figure.stimulus[data-index="0"]')
    assert figure.get_attribute("data-label") == HOSTILE
    assert HOSTILE in figure.find_element("css selector", "figcaption").get_attribute("textContent")
    assert not driver.find_elements("css selector", 'img[src="x"]')  # no element made from the name
    assert not _severe(driver)  # (an alert() would have stopped every command above)


def test_a_screenshot_of_the_unit_view_is_a_png(driver, index, tmp_path):
    _open(driver, index, f"{SITE}/5", '#unit-view[data-unit="5"] #top-stimuli figure.stimulus img')
    shot = tmp_path / "unit.png"
    assert driver.save_screenshot(str(shot))
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert not _severe(driver)


@pytest.mark.parametrize("noise, method, caption", [
    ("sparse_noise", "sparse_noise_map", "on, off squares, left to right"),
    ("white_noise", "spike_triggered_average", "Spike-triggered average of the white noise")])
def test_a_noise_recording_shows_each_units_receptive_field_map(driver, tmp_path, noise, method, caption):
    from torch import nn

    from tests.web.test_atlas import _model, _transform, details

    make = getattr(ur.stimuli, noise)
    make(tmp_path / "noise", size=12, **({"grid": 4} if noise == "sparse_noise" else {"n": 64}))
    layers = [{"name": "2", "units": "center"}]
    model = _model()[:3]
    assert isinstance(model[2], nn.Conv2d)
    path = ur.record(model, tmp_path / "noise", layers, tmp_path / "acts.h5", progress=False, transform=_transform())
    index = ur.atlas(path, tmp_path / "atlas", progress=False)
    site = read_js(index.parent / "data" / "manifest.js")[0]["sites"][0]
    assert site["rf_map_method"] == method
    files = details(index.parent, site)["rf_map"]
    for unit in range(site["n_units"]):
        _open(driver, index, f"2/{unit}", f'#unit-view[data-unit="{unit}"] #rf-map img')
        img = driver.find_element("css selector", "#rf-map img")
        _wait(driver, lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img),
              "the map's image")
        assert img.get_attribute("src") == (index.parent / files[unit]).as_uri()
        assert driver.find_element("css selector", "#rf-map figcaption").text.startswith(caption)
    assert not _severe(driver)
