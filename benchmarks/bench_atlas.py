"""What the unit atlas costs to build (issue 26): resnet50 ``layer3`` centre units over 2,000 stimuli.

resnet50 (random weights, seed 0) records 2,000 generated gratings at 224 px (16
orientations × 5 spatial frequencies × 25 phases) at ``layer3`` with ``units: center``
(1,024 units), kept in full and as a summary (``keep: both``, ``top: 9``); then
``ur.atlas`` builds the folder twice: from that file, and from one that keeps the site in
full only (the ranks computed from the responses). Each build is timed on its own; the
recording is timed too, for scale. ``--scale`` adds a site of 100,352 units (resnet18
``layer2``, every unit, 200 stimuli): the build time, and the largest file a browser
loads at once (the manifest, one table chunk, one detail chunk), against the whole; with
``--browser`` also, in Debian's headless chromium (selenium), the time from opening that
site until its table shows all 100,352 units, to sort them by their mean, and to open one
unit by its permalink.

    PYTHONPATH=. python benchmarks/bench_atlas.py              # ~6 min on 2 cores (mostly the recording)
    PYTHONPATH=. python benchmarks/bench_atlas.py --n 200      # a quick look
    PYTHONPATH=. python benchmarks/bench_atlas.py --scale --browser
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import unitrec as ur


def _stimuli(folder: Path, n: int) -> Path:
    phases = max(1, n // 80)
    ur.stimuli.gratings(folder, size=224, orientations=[i * 180 / 16 for i in range(16)],
                        spatial_frequencies=[2, 4, 8, 16, 32], phases=[i * 360 / phases for i in range(phases)])
    return folder


def _record(model_name: str, stimuli: Path, layers: list, out: Path) -> tuple[Path, float]:
    model = ur.load_model(model_name, seed=0)
    transform = ur.build_transform({"resize": None, "crop": None, "normalize": "imagenet"})
    start = time.perf_counter()
    path = ur.record(model, stimuli, layers, out, transform=transform, batch_size=32, progress=False)
    return path, time.perf_counter() - start


def _build(path: Path, out: Path) -> tuple[float, Path]:
    start = time.perf_counter()
    index = ur.atlas(path, out, progress=False)
    return time.perf_counter() - start, index.parent


def _size(folder: Path, pattern: str = "**/*") -> tuple[int, int]:
    sizes = [p.stat().st_size for p in folder.glob(pattern) if p.is_file()]
    return sum(sizes), max(sizes, default=0)


def _browser_times(index: Path, site: str, n_units: int) -> str:
    """Seconds to show, sort and open a unit of a large site in headless chromium."""
    import os

    os.environ.setdefault("SE_OFFLINE", "true")  # selenium downloads nothing
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    profile = tempfile.mkdtemp(prefix="bench_atlas-chromium-")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1280,900", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)

    def until(check, what: str) -> float:
        start = time.perf_counter()
        while not check():
            if time.perf_counter() - start > 120:
                raise TimeoutError(what)
            time.sleep(0.01)
        return time.perf_counter() - start

    def text(selector: str) -> str:
        found = driver.find_elements(By.CSS_SELECTOR, selector)
        return found[0].text if found else ""

    try:
        driver.get(index.as_uri())
        until(lambda: driver.find_elements(By.CSS_SELECTOR, ".site-card"), "the sites")
        driver.get(f"{index.as_uri()}#{site}")
        shown = until(lambda: text("#unit-count").startswith(f"{n_units:,} of"), "the table")
        first = text("#unit-table tbody tr")
        driver.find_element(By.CSS_SELECTOR, 'th[data-column="mean"]').click()
        sort = until(lambda: text("#unit-table tbody tr") != first, "the sort")
        driver.get(f"{index.as_uri()}#{site}/{n_units - 1}")
        unit = until(lambda: driver.find_elements(By.CSS_SELECTOR, "#top-stimuli figure.stimulus"), "a unit")
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    return (f"in chromium: the table of all {n_units:,} units shown {shown:.2f} s after opening the site, sorted "
            f"by mean in {sort:.2f} s; a unit by permalink {unit:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="stimuli (default 2000)")
    parser.add_argument("--scale", action="store_true", help="also a site of 100,352 units")
    parser.add_argument("--browser", action="store_true", help="with --scale: time the page in headless chromium")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (printed)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_atlas-"))
    try:
        stimuli = _stimuli(work / "stimuli", args.n)
        n = sum(1 for p in stimuli.iterdir() if p.suffix == ".png")
        both, rec_s = _record("resnet50", stimuli, [{"name": "layer3", "units": "center", "keep": "both", "top": 9}],
                              work / "both.h5")
        full, _ = _record("resnet50", stimuli, [{"name": "layer3", "units": "center"}], work / "full.h5")
        print(f"resnet50 layer3 centre units (1,024) over {n} stimuli of 224 px; recording took {rec_s:.1f} s")
        for name, path in (("summary (keep: both)", both), ("responses (keep: full)", full)):
            seconds, folder = _build(path, work / f"atlas-{path.stem}")
            thumbs = sum(1 for _ in (folder / "thumbs").iterdir())
            total, _ = _size(folder)
            print(f"  atlas from the {name}: {seconds:.1f} s ({seconds / rec_s:.2f}× the recording), "
                  f"{thumbs} thumbnails for {n} stimuli, {total / 2**20:.1f} MiB")
            seconds, folder = _build(path, work / f"atlas-{path.stem}")
            print(f"    rebuilt over the old atlas: {seconds:.1f} s")
        if args.scale:
            few = work / "few"
            few.mkdir()
            for p in sorted(stimuli.iterdir())[:200]:
                if p.suffix == ".png":
                    shutil.copy(p, few / p.name)
            path, rec_s = _record("resnet18", few, ["layer2"], work / "scale.h5")
            seconds, folder = _build(path, work / "atlas-scale")
            total, _ = _size(folder)
            site = folder / "data" / "s00"
            _, table = _size(site, "table-*.js")
            _, detail = _size(site, "units-*.js")
            manifest = (folder / "data" / "manifest.js").stat().st_size
            print(f"resnet18 layer2, every unit (100,352) over {len(list(few.glob('*.png')))} stimuli: atlas in "
                  f"{seconds:.1f} s ({seconds / rec_s:.2f}× the recording); {total / 2**20:.0f} MiB in all; "
                  f"the largest files a browser loads at once: manifest {manifest / 2**10:.0f} KiB, "
                  f"a table chunk {table / 2**20:.2f} MiB (all 21 to sort the site: "
                  f"{_size(site, 'table-*.js')[0] / 2**20:.1f} MiB), a unit chunk {detail / 2**20:.2f} MiB")
            if args.browser:
                print("  " + _browser_times(folder / "index.html", "layer2", 100_352))
    finally:
        if args.keep:
            print(f"work folder: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
