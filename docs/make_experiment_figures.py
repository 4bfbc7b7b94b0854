"""Draw the README's "Experiments" figures: python docs/make_experiment_figures.py

Needs the v1 protocols run first (``unitrec run configs/v1_protocols.yaml``); records
white noise and a few layers of the same random-weight resnet18 under runs/experiments,
and writes PNG + SVG to docs/img/experiment_*.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import xarray as xr

import unitrec as ur
from unitrec import analysis as A
from unitrec.stimuli import white_noise

ROOT = Path(__file__).resolve().parents[1]
IMG, RUNS = ROOT / "docs" / "img", ROOT / "runs" / "experiments"


def save(fig, name: str) -> None:
    fig.savefig(IMG / f"{name}.png", dpi=90)
    fig.savefig(IMG / f"{name}.svg", metadata={"Date": None})


def main() -> None:
    RUNS.mkdir(parents=True, exist_ok=True)
    report = ROOT / "runs" / "v1_protocols" / "report"
    for stem in ("f1f0_layer1", "sf_layer1", "size_layer1", "contrast_layer1"):
        for suffix in (".png", ".svg"):
            shutil.copy(report / f"{stem}{suffix}", IMG / f"experiment_{stem}{suffix}")

    model = ur.load_model("resnet18", seed=0)
    t64 = ur.build_transform({"resize": None, "crop": None, "normalize": "imagenet"})
    noise = white_noise(RUNS / "noise", size=64, n=4000, seed=0, overwrite=True)
    erf = A.effective_rf(model, "layer1", noise, units=[(c, 8, 8) for c in range(4)], transform=t64)
    path = ur.record(model, noise, [{"name": "layer1", "units": "center"}], RUNS / "noise.h5", transform=t64,
                     overwrite=True, progress=False)
    sta = A.spike_triggered_average(ur.load_layer(path, "layer1"))
    save(A.plot_rf_map(erf, ncols=4), "experiment_erf_layer1")
    save(A.plot_rf_map(sta, units=range(4), ncols=4), "experiment_sta_layer1")

    sites = ["layer1", "layer2", "layer3", "layer4"]
    path = ur.record(model, noise, [{"name": s, "pool": "mean"} for s in sites], RUNS / "pooled.h5",
                     transform=t64, overwrite=True, progress=False)
    layers = {s: ur.load_layer(path, s) for s in sites}
    rng = np.random.default_rng(0)
    x = layers["layer3"].values
    x = (x - x.mean(0)) / (x.std(0) + 1e-9)
    signal = x @ rng.normal(size=(x.shape[1], 40)) / np.sqrt(x.shape[1])
    trials = signal[:, None, :] + rng.normal(scale=0.7, size=(len(x), 4, 40))  # 4 trials per stimulus
    neural = xr.DataArray(trials, dims=("stimulus", "trial", "neuroid"),
                          coords={"stimulus": layers["layer3"].stimulus.values,
                                  "neuroid": [f"n{i:02d}" for i in range(40)]})
    result = A.encoding_model(layers, neural)
    print(result.median_r.to_series(), result.attrs["best_layer"])
    save(A.plot_encoding(result), "experiment_encoding")


if __name__ == "__main__":
    main()
