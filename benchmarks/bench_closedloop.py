"""What does the closed loop cost? Scoring against a bare forward, and an evolution's time outside the model.

1. ``Scorer`` ÷ a bare forward to the same site (resnet50 ``layer3`` centre units,
   batch 64): the bare forward is what a user writes by hand (the stem and
   ``layer1``–``layer3`` called in a row, the centre column taken), under
   ``torch.no_grad``; both are timed alternately in one process, best of the rounds.
   Goal ≤ 1.02.
2. ``ur.evolve`` of a resnet18 ``layer4`` unit, 25 generations × 40 images: seconds
   per generation, and the share of the time spent outside the model (the scorer's
   forward is timed from inside the run; the rest is the generator, CMA-ES, the
   file). Goal ≤ 5 %.

Run: ``python benchmarks/bench_closedloop.py [--device cuda] [--rounds 5]``. Random
weights (nothing is downloaded); timings depend on the machine, the ratios much less.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import unitrec as ur


def _best(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def scorer_vs_bare(device: str, rounds: int, batch: int) -> None:
    model = ur.load_model("resnet50").to(device)
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(device)
    scorer = ur.Scorer(model, [{"name": "layer3", "units": "center"}], device=device)
    scorer(x)  # the trace, once

    @torch.no_grad()
    def bare():
        h = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        h = model.layer3(model.layer2(model.layer1(h)))
        return h[:, :, h.shape[2] // 2, h.shape[3] // 2].clone()

    torch.testing.assert_close(scorer(x), bare(), rtol=0, atol=0)  # the same numbers
    ratios, s_times, b_times = [], [], []
    for _ in range(rounds):  # alternated, so that a busy moment hits both
        b = _best(bare, 1)
        s = _best(lambda: scorer(x), 1)
        b_times.append(b)
        s_times.append(s)
        ratios.append(s / b)
    from unitrec.closedloop.scorer import _state

    check = _best(lambda: _state(model), 20)
    print(f"scorer's per-call check that its trace still holds (resnet50, no hashing): {1000 * check:.2f} ms")
    print(f"scorer vs bare forward to resnet50 layer3 (centre units, batch {batch}, {device}): "
          f"bare {min(b_times):.3f} s, scorer {min(s_times):.3f} s, ratio of bests {min(s_times) / min(b_times):.3f}, "
          f"median ratio {statistics.median(ratios):.3f} (goal <= 1.02)")


def evolution(device: str, generations: int, population: int) -> None:
    from unitrec.closedloop import scorer as scorer_module

    model = ur.load_model("resnet18").to(device)
    spent = [0.0]
    real_call = scorer_module.Scorer.__call__

    def timed(self, x):
        start = time.perf_counter()
        try:
            return real_call(self, x)
        finally:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            spent[0] += time.perf_counter() - start

    scorer_module.Scorer.__call__ = timed  # type: ignore[method-assign]
    marks: list[tuple[float, float]] = []  # (wall clock, time inside the model) at the end of each generation
    try:
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            ur.evolve(model, {"name": "layer4", "channels": [7], "units": "center"}, Path(folder) / "evo.h5",
                      generations=generations, population=population, device=device,
                      progress=lambda g, scores: marks.append((time.perf_counter(), spent[0])))
            total = time.perf_counter() - start
    finally:
        scorer_module.Scorer.__call__ = real_call  # type: ignore[method-assign]
    (t0, in0), (t1, in1) = marks[0], marks[-1]
    steady = (t1 - t0) / (len(marks) - 1)
    print(f"evolution of a resnet18 layer4 unit ({generations} generations x {population}, 224 px, {device}): "
          f"{steady:.3f} s per generation, {100 * ((t1 - t0) - (in1 - in0)) / (t1 - t0):.1f} % of it outside the "
          f"model (goal <= 5 %); set-up and the first generation (the trace, the weights' hash, the file) "
          f"{marks[0][0] - start:.2f} s, {total:.1f} s in all")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--generations", type=int, default=25)
    parser.add_argument("--population", type=int, default=40)
    args = parser.parse_args()
    torch.manual_seed(0)
    scorer_vs_bare(args.device, args.rounds, args.batch)
    evolution(args.device, args.generations, args.population)


if __name__ == "__main__":
    main()
