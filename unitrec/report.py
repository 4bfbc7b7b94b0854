"""``unitrec report``: the figures a newcomer wants after a recording, as PNG, SVG + HTML.

Per recording: tuning curves of the most selective units of each site (when the
stimuli carry a parameter such as ``orientation``), an RDM per site, layer × layer
CKA and RSA matrices, and a montage of the preferred stimuli of a few units.
Sites kept as summaries (``keep: summary`` or ``both``) get a table of their
statistics and montages drawn from their stored ranks; a summary-only site has no
full array and appears nowhere else.
"""

from __future__ import annotations

import html
import os
import textwrap
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from unitrec import analysis as A
from unitrec.errors import ConfigError, StimulusError, UnitrecError, UnitrecWarning
from unitrec.files.info import recording_info
from unitrec.files.load import lazy_chunks, load_layer, load_summary

__all__ = ["write_report"]

_MAX_RDM_STIMULI = 200  # an RDM of more stimuli is unreadable as a picture
_MOST_DRIVEN = 3  # units per summary site named in the table and drawn as montages
_MAX_PROTOCOL_UNITS = 4096  # the protocols fit curves to every unit: a few ms each


#: Bytes (as float64) of the sites read whole, in all; None: one analysis block (a sixteenth of the
#: machine's memory, 128 MiB to 1 GiB). Beyond, sites stay on dask blocks.
_IN_MEMORY: int | None = None
_STAMP = ".unitrec-report.json"  # beside index.html: which recording and options the report was made from


def _load_sites(path: str | os.PathLike, sites: list[dict[str, Any]]) -> dict[str, Any]:
    """Each full site as a DataArray: read whole while the sites read so far fit in one
    analysis block (as float64), on dask blocks beyond, so a large recording is never
    loaded. Read whole, a site costs no dask compute per figure (there were 463)."""
    from unitrec.analysis._units import default_block_bytes

    budget = default_block_bytes() if _IN_MEMORY is None else _IN_MEMORY
    layers, total = {}, 0
    rows = None  # one snapshot of the rows recorded, for every site (a run may still be writing)
    for site in sites:
        size = int(np.prod(site["shape"])) * 8  # the analyses work in float64
        whole = total + size <= budget
        total += size if whole else 0
        da = load_layer(path, site["name"], include_missing=True, chunks=None if whole else lazy_chunks())
        if rows is None:
            rows = np.flatnonzero(np.asarray(da["done"].values) == 1)
        da = da.isel(stimulus=rows)
        layers[site["name"]] = da.load() if whole else da
    return layers


def _stamp(info: dict[str, Any], options: dict[str, Any]) -> dict[str, Any] | None:
    """What identifies a report: the recording (run id, creation and finish times), the
    options and unitrec's version; None for an unfinished recording (always rebuilt)."""
    if info.get("status") != "complete" or not info.get("finished"):
        return None
    from unitrec._version import __version__

    return {"recording": {k: str(info.get(k)) for k in ("run_id", "created", "finished")},
            "options": options, "unitrec_version": __version__}


def _up_to_date(out: Path, stamp: dict[str, Any] | None) -> bool:
    """Whether ``out`` holds a whole report made from the same recording with the same options."""
    import json

    if stamp is None or not (out / "index.html").is_file():
        return False
    try:
        return json.loads((out / _STAMP).read_text(encoding="utf-8")) == stamp
    except (OSError, ValueError):
        return False


class _Progress:
    """One line on stderr per figure written (lines, not a bar: logs stay readable)."""

    def __init__(self, on: bool) -> None:
        import time

        self.on, self.start, self.count = on, time.perf_counter(), 0

    def say(self, text: str) -> None:
        import sys
        import time

        if self.on:
            print(f"report: {text} ({time.perf_counter() - self.start:.1f} s)", file=sys.stderr, flush=True)

    def figure(self, name: str) -> None:
        self.count += 1
        self.say(f"{self.count} figures, {name}")


def write_report(path: str | os.PathLike, out_dir: str | os.PathLike, *, by: str | None = None,
                 units_per_site: int = 8, force: bool = False, progress: bool = True) -> Path:
    """Write figures of a recording, as PNG and SVG, and an ``index.html`` showing them.

    Parameters
    ----------
    path
        A recording.
    out_dir
        Folder for the figures and ``index.html`` (created).
    by
        Stimulus coordinate for tuning curves; default ``orientation`` when present.
    units_per_site
        Tuning curves drawn per site (the most selective units, one per channel).
    force
        Write the report even if ``out_dir`` holds one of the same recording made
        with the same options.
    progress
        Print a line on stderr per figure written, with the time so far.

    Returns
    -------
    pathlib.Path
        The ``index.html`` file.

    Raises
    ------
    ConfigError
        If `units_per_site` is not a positive integer.
    UnitrecError
        If matplotlib is not installed.

    Notes
    -----
    Every figure is written twice with the same stem: ``NAME.png`` (110 dpi),
    shown in the page, and ``NAME.svg`` (vector, for print), which the page links
    from the image and from the "SVG" link under it.

    A finished recording's report is written once: ``out_dir/.unitrec-report.json``
    records the recording's ``run_id``, ``created`` and ``finished`` attributes, the
    options and unitrec's version, and a later call that finds the same (and an
    ``index.html``) returns at once. A recording that is not finished is always
    reported anew.

    Sites are read whole while they fit together, as float64, in one analysis
    block (a sixteenth of the machine's memory, 128 MiB to 1 GiB; see
    :mod:`unitrec.analysis`); the others are analysed on dask blocks of the
    file's chunks. Neither the report nor its figures import torch.

    Tuning curves are drawn for the most selective units of the stronger half
    (peak response at least the site's median), at most one per channel; a
    convolutional map's units are taken at the centre of the map.

    Tuning curves, RDMs, layer similarity and participation ratios need every
    response: they cover the sites stored in full (``keep: full`` or ``both``).
    Each site kept as a summary gets a row in the summaries table (units, stimuli
    summarised, mean of the units' means, median lifetime sparseness, the
    preferred stimulus of its most driven units) and montages of those units'
    preferred stimuli, from the summary.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UnitrecError("the report needs matplotlib: pip install 'unitrec[plots]'") from None
    if isinstance(units_per_site, bool) or not isinstance(units_per_site, (int, np.integer)) or units_per_site < 1:
        raise ConfigError(f"units_per_site must be a positive integer, got {units_per_site!r}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"the report folder {out} is a file; give a folder (it is created if need be)")
    info = recording_info(path)
    stamp = _stamp(info, {"by": by, "units_per_site": int(units_per_site)})
    index = out / "index.html"
    tell = _Progress(progress)
    if not force and _up_to_date(out, stamp):
        tell.say(f"{index} is up to date with {os.path.basename(info['file'])}; nothing to do")
        return index
    out.mkdir(parents=True, exist_ok=True)
    (out / _STAMP).unlink(missing_ok=True)  # a report cut short must not pass for a whole one
    # a summary-only site has no full array: load_layer would refuse it
    full = [s for s in info["sites"] if s.get("keep", "full") in ("full", "both")]
    summarised = [s["name"] for s in info["sites"] if s.get("keep", "full") in ("summary", "both")]
    layers = _load_sites(path, full)
    summaries = {name: load_summary(path, name) for name in summarised}
    tell.say(f"read {len(layers)} sites and {len(summaries)} summaries")
    first = next(iter(layers.values()), None)
    coords = [] if first is None else [c for c in first.coords
                                       if c != "stimulus" and first[c].dims == ("stimulus",) and c != "done"]
    if first is None:
        by = None  # tuning curves need full responses
    elif by is None and "orientation" in coords:
        by = "orientation"
    sections: list[tuple[str, list[tuple[str, str]]]] = []

    def save(fig, name: str) -> str:
        """Write ``name`` (a .png) and the same figure as SVG beside it; the PNG's name."""
        from matplotlib import rc_context

        fig.savefig(out / name, dpi=110)
        # the layout the PNG computed holds for the SVG (it is in figure fractions and points):
        # without an engine the SVG is drawn once, not laid out again first
        fig.set_layout_engine(None)
        with rc_context({"svg.hashsalt": name}):  # fixed ids and no date: the same figure, the same file
            fig.savefig((out / name).with_suffix(".svg"), metadata={"Date": None})
        tell.figure(name)
        return name

    summary_rows = []
    for name, da in layers.items():
        # attention weights (head, query, key) are a distribution per query, not units' responses
        pr = "-" if _attention(da) else _or_dash(lambda: f"{A.participation_ratio(da):.1f}")
        sparse = np.asarray(A.lifetime_sparseness(da).values, dtype=float)
        median = f"{np.nanmedian(sparse):.2f}" if np.isfinite(sparse).any() else "-"  # NaN: no unit defined
        summary_rows.append((name, "×".join(map(str, da.shape)), pr, median))
    safe = {name: name.replace("/", "_").replace(":", "-").replace("@", "_at_") for name in [*layers, *summaries]}
    summary_table = [_summary_row(name, ds) for name, ds in summaries.items()]

    protocol_rows = None
    if first is not None and "protocol" in coords:  # the grating protocols: tuning on the full-field sweep
        protocol_rows = np.flatnonzero(np.asarray(first["protocol"].values).astype(str) == "phase")
    if by is not None:
        figs = []
        for name, da in layers.items():
            if protocol_rows is not None and len(protocol_rows):
                da = da.isel(stimulus=protocol_rows)
            # selectivity indices need non-negative responses: use the rectified
            # response (a firing rate) for sites whose values go negative
            rectified = bool(float(da.min()) < 0)
            if "y" in da.dims and "x" in da.dims:  # only the map's centre is drawn (_tuning_units)
                da = da.isel(y=[da.sizes["y"] // 2], x=[da.sizes["x"] // 2])
            # computed once: the figure reads every unit's curve, a dask compute each otherwise
            tuning = A.tuning_curves(da.clip(min=0) if rectified else da, by=by).compute()
            best, centre = _tuning_units(tuning, by, units_per_site)
            if not best:  # no unit with a defined selectivity: nothing worth a figure
                continue
            fig = A.plot_tuning_curves(tuning, units=best)
            title = (f"{name}: the {len(best)} most {by}-selective channels" + (", each at the map's centre"
                     if centre else "") + " (of the stronger half of units; mean ± s.e.m."
                     + (" of the rectified response)" if rectified else ")"))
            fig.suptitle(textwrap.fill(title, int(12 * fig.get_figwidth())), fontsize=10)  # ~12 characters an inch
            figs.append((f"{name}", save(fig, f"tuning_{safe[name]}.png")))
        sections.append((f"Tuning curves by {by}", figs))

    if protocol_rows is not None:
        sections.extend(_protocol_sections(layers, save, safe))

    if first is not None:
        n = first.sizes["stimulus"]
        step = max(1, int(np.ceil(n / _MAX_RDM_STIMULI)))
        figs = []
        rdms = {name: A.rdm(da.isel(stimulus=slice(None, None, step)), metric="correlation")
                for name, da in layers.items()}
        top = max((float(np.nanmax(r.values)) for r in rdms.values() if np.isfinite(r.values).any()), default=1.0)
        for name, rdm in rdms.items():  # one colour scale for every site, from 0
            fig = A.plot_rdm(rdm, by=by, vmin=0.0, vmax=top)
            fig.suptitle(f"{name}: RDM (1 − Pearson r)" + (f", stimuli grouped by {by}" if by else ""))
            figs.append((name, save(fig, f"rdm_{safe[name]}.png")))
        sections.append(("Representational dissimilarity matrices", figs))

    if len(layers) > 1:
        figs = []
        for method in ("cka", "rsa"):
            try:
                matrix = A.layer_similarity(layers, method=method)
            except UnitrecError as exc:  # fewer than 2 stimuli with a response at every site
                if "at least 2 stimuli" not in str(exc):
                    raise
                break
            fig = A.plot_layer_matrix(matrix)
            fig.suptitle("linear CKA between sites" if method == "cka" else "RSA (Spearman) between sites")
            figs.append((method.upper(), save(fig, f"layers_{method}.png")))
        if figs:
            sections.append(("Layer-by-layer similarity", figs))

    root = info.get("stimulus_root")
    try:
        _montages(root, layers, summaries, safe, save, sections)
    except StimulusError as exc:  # the images were moved or deleted since: the rest of the report stands
        warnings.warn(f"report: preferred-stimulus montages left out ({exc}); give plot_montage the folder's "
                      "new place with stimulus_root=", UnitrecWarning, stacklevel=2)
        sections[:] = [sec for sec in sections if not sec[0].startswith("Preferred stimuli")]

    index.write_text(_html(info, summary_rows, sections, summary_table), encoding="utf-8")
    if stamp is not None:  # written last: only a whole report is taken as up to date
        import json

        (out / _STAMP).write_text(json.dumps(stamp, indent=1), encoding="utf-8")
    tell.say(f"{index}")
    return index


def _montages(root: Any, layers: dict[str, Any], summaries: dict[str, Any], safe: dict[str, str],
              save: Callable[..., str], sections: list) -> None:
    """The preferred stimuli of the last map's and each summary site's most driven units."""
    if root and Path(root).is_dir():
        units = {n: d for n, d in layers.items() if not _attention(d)}
        if units:
            name, da = list(units.items())[-1]
            conv = [(n, d) for n, d in units.items() if d.ndim > 2 or "unit" in d.dims]
            if conv:
                name, da = conv[-1]
            if name not in summaries:  # a summary site gets its montages from the summary, below
                figs = []
                flat = A.top_stimuli(da, k=1)["response"].values.reshape(-1)
                for unit in np.argsort(np.nan_to_num(flat, nan=-np.inf))[::-1][:3]:
                    fig = A.plot_montage(da, int(unit), root, k=min(9, da.sizes["stimulus"]))
                    figs.append((f"{name} unit {int(unit)}", save(fig, f"montage_{safe[name]}_{int(unit)}.png")))
                sections.append((f"Preferred stimuli ({name})", figs))
        for name, ds in summaries.items():
            k = min(9, int(ds.sizes["rank"]), int(ds["count"]))
            if k < 1:
                continue
            figs = []
            for unit in _most_driven(ds):
                fig = A.plot_montage(ds, unit, root, k=k)
                figs.append((f"{name} unit {unit}", save(fig, f"montage_{safe[name]}_{unit}.png")))
            sections.append((f"Preferred stimuli ({name}, from its summary)", figs))


def _protocol_sections(layers: dict[str, Any], save, safe: dict[str, str]) -> list[tuple[str, list[tuple[str, str]]]]:
    """Figures of the grating protocols (``unitrec stimuli protocols``) for every site
    small enough to fit curves to each unit; a site that goes negative is rectified."""
    from unitrec.errors import ConfigError

    sections = []
    for name, da in layers.items():
        units = int(np.prod([n for d, n in da.sizes.items() if d != "stimulus"]))
        if units > _MAX_PROTOCOL_UNITS:
            sections.append((f"Grating protocols ({name})", [(
                f"{units} units: too many to fit a curve to each here; record the site with "
                "units: center for the protocols", "")]))
            continue
        rectify = bool(float(da.min()) < 0)
        figs = []
        for caption, analyse in _PROTOCOL_FIGURES:
            try:  # a set without what one analysis needs (phases, 4 frequencies, apertures) skips it
                text, fig, stem = analyse(da, rectify)
            except ConfigError as exc:
                figs.append((f"{caption}: {exc}", ""))
            else:
                figs.append((text, save(fig, f"{stem}_{safe[name]}.png")))
        title = f"Grating protocols ({name}" + (", rectified responses)" if rectify else ")")
        sections.append((title, figs))
    return sections


def _f1f0(da, rectify: bool):
    ds = A.modulation_ratio(da, rectify=True)
    ratio = np.asarray(ds["ratio"].values, dtype=float)
    return (f"F1/F0: {int(np.nansum(ratio > 1))} simple, {int(np.nansum(ratio <= 1))} complex "
            "(rectified responses)", A.plot_modulation_ratio(ds), "f1f0")


def _sf(da, rectify: bool):
    ds = A.sf_tuning(da, rectify=rectify)
    return (f"spatial frequency: median bandwidth {_median(ds['bandwidth'])} octaves",
            A.plot_sf_tuning(ds, max_units=8), "sf")


def _size(da, rectify: bool):
    ds = A.size_tuning(da, rectify=rectify)
    return (f"size tuning: median suppression index {_median(ds['ssi'])}", A.plot_size_tuning(ds, max_units=8),
            "size")


def _contrast(da, rectify: bool):
    ds = A.contrast_response(da, rectify=rectify)
    c50 = np.asarray(ds["c50"].values, dtype=float)
    reached = np.asarray(ds["c50_in_range"].values, dtype=bool) & np.isfinite(c50)
    beyond = int((np.isfinite(c50) & ~reached).sum())
    # a c50 beyond the contrasts shown is the fit's bound, not a measurement: left out of the median
    text = (f"contrast response: median c50 {_median(c50[reached])} (of {int(reached.sum())} units whose c50 "
            f"lies within the contrasts shown; {beyond} beyond them, left out)")
    return text, A.plot_contrast_response(ds, max_units=8), "contrast"


#: (what, analysis → (caption, figure, file stem)) for each grating protocol
_PROTOCOL_FIGURES = (("F1/F0", _f1f0), ("spatial frequency", _sf), ("size tuning", _size),
                     ("contrast response", _contrast))


def _median(values) -> str:
    v = np.asarray(values, dtype=float)
    return f"{np.nanmedian(v):.2f}" if np.isfinite(v).any() else "-"


def _tuning_units(tuning, by: str, n: int) -> tuple[list[int], bool]:
    """Flat positions of up to ``n`` units to draw, most selective first; whether they are map centres.

    Near-silent units answering one stimulus are "perfectly selective" and
    uninformative: only units whose peak is in the upper half are ranked. At most
    one unit per channel: the units of one channel are copies of one filter at
    other places, and for stimuli that are the same everywhere (gratings) they
    have nearly the same curve. A convolutional map's units are taken at its
    centre (row H//2, column W//2): a unit at the border sees part of its
    receptive field on zero padding, and the centre is where the receptive field
    best covers the image.
    """
    dims = [d for d in tuning["mean"].dims if d != by]
    shape = tuple(int(tuning.sizes[d]) for d in dims)
    sel = np.asarray(tuning["selectivity"].transpose(*dims).values, dtype=float).reshape(-1)
    peak = np.asarray(tuning["mean"].max(by).transpose(*dims).values, dtype=float).reshape(-1)
    centre = "y" in dims and "x" in dims
    if centre:
        grid = np.indices(shape).reshape(len(dims), -1)
        at_centre = ((grid[dims.index("y")] == shape[dims.index("y")] // 2)
                     & (grid[dims.index("x")] == shape[dims.index("x")] // 2))
        peak = np.where(at_centre, peak, np.nan)
    if not np.isfinite(peak).any():
        return [], centre
    strong = np.isfinite(sel) & (peak >= np.nanmedian(peak))
    if "channel" in tuning.coords:
        channel = np.broadcast_to(tuning["channel"].broadcast_like(tuning["selectivity"]).transpose(*dims).values,
                                  shape).reshape(-1)
    else:
        channel = np.arange(sel.size)  # no channels: every unit is its own
    chosen: list[int] = []
    seen: set = set()
    for u in np.argsort(-np.where(strong, sel, -np.inf), kind="stable"):  # ties: the first unit first
        if len(chosen) == n or not strong[u]:
            break
        if channel[u] not in seen:
            seen.add(channel[u])
            chosen.append(int(u))
    return chosen, centre


def _most_driven(ds, n: int = _MOST_DRIVEN) -> list[int]:
    """Flat positions of the units with the highest best response, highest first."""
    best = np.asarray(ds["top_response"].isel(rank=0).values, dtype=float).reshape(-1)
    if not np.isfinite(best).any():
        return []
    order = np.argsort(-np.nan_to_num(best, nan=-np.inf), kind="stable")  # ties: the first unit first
    return [int(u) for u in order[:n] if np.isfinite(best[u])]


def _attention(da) -> bool:
    """Attention weights ``(head, query, key)``: no map, no units to rank or montage."""
    return "query" in da.dims and "key" in da.dims


def _unit_label(ds, unit: int) -> str:
    """``channel=3, y=1, x=2`` of a flat unit position in a summary."""
    dims = list(ds["mean"].dims)
    shape = tuple(ds.sizes[d] for d in dims)
    position = np.unravel_index(unit, shape) if shape else ()
    parts = []
    for d, i in zip(dims, position):
        value = ds[d].values[i] if d in ds.coords else i
        parts.append(f"{d}={value}")
    return ", ".join(parts) or "unit"


def _summary_row(name: str, ds) -> tuple[str, str, str, str, str, list[str]]:
    """A row of the summaries table (plain text; escaped when written)."""
    units = int(np.prod([ds.sizes[d] for d in ds["mean"].dims])) if ds["mean"].dims else 1
    shape = "×".join(str(ds.sizes[d]) for d in ds["mean"].dims) or "1"
    count = int(ds["count"])
    means = np.asarray(ds["mean"].values, dtype=float)
    mean = f"{np.nanmean(means):.3g}" if np.isfinite(means).any() else "-"
    sparse = np.asarray(A.lifetime_sparseness(ds).values, dtype=float)
    median = f"{np.nanmedian(sparse):.2f}" if np.isfinite(sparse).any() else "-"
    preferred = []
    best = ds["top_stimulus"].isel(rank=0).values.reshape(-1)
    response = np.asarray(ds["top_response"].isel(rank=0).values, dtype=float).reshape(-1)
    for unit in _most_driven(ds):
        preferred.append(f"{_unit_label(ds, unit)}: {best[unit]} ({response[unit]:.3g})")
    return name, f"{units} ({shape})", str(count), mean, median, preferred


def _html(info: dict[str, Any], rows, sections, summary_table=()) -> str:
    esc = html.escape
    parts = [
        "<!doctype html><meta charset='utf-8'><title>unitrec report</title>",
        "<style>body{font-family:sans-serif;max-width:1400px;margin:auto;padding:0 1em}"
        ".figures{display:flex;flex-wrap:wrap;gap:0 2em;align-items:flex-start}"
        "img{max-width:100%;height:auto;display:block}figure{margin:1em 0;max-width:100%}figcaption{color:#444}"
        "code{overflow-wrap:anywhere}table{border-collapse:collapse;display:block;overflow-x:auto}"
        "td,th{border:1px solid #ccc;padding:2px 8px}</style>",
        f"<h1>unitrec report: {esc(os.path.basename(info['file']))}</h1>",
        f"<p>model <b>{esc(str(info.get('model')))}</b> — {esc(str(info.get('model_description')))}<br>"
        f"{info['n_recorded']} of {info['n_stimuli']} stimuli recorded; status {esc(str(info.get('status')))}; "
        f"preprocessing <code>{esc(str(info.get('preprocessing')))}</code><br>"
        f"unitrec {esc(str(info.get('unitrec_version')))}, run id {esc(str(info.get('run_id')))}</p>",
        "<table><tr><th>site</th><th>shape</th><th>participation ratio</th>"
        "<th>median lifetime sparseness</th></tr>",
        *[f"<tr><td>{esc(a)}</td><td>{b}</td><td>{c}</td><td>{d}</td></tr>" for a, b, c, d in rows],
        "</table>",
    ]
    if summary_table:
        parts += [
            "<h2>Summaries</h2>",
            "<p>Sites kept as summaries (<code>keep: summary</code> or <code>both</code>): running statistics "
            "over every stimulus; the preferred stimulus of the most driven units (highest best response).</p>",
            "<table class='summaries'><tr><th>site</th><th>units</th><th>stimuli summarised</th>"
            "<th>mean of means</th><th>median lifetime sparseness</th><th>most-preferred stimulus "
            "of the most driven units</th></tr>",
            *[f"<tr><td>{esc(a)}</td><td>{esc(b)}</td><td>{esc(c)}</td><td>{esc(d)}</td><td>{esc(e)}</td>"
              f"<td>{'<br>'.join(esc(x) for x in f) or '-'}</td></tr>" for a, b, c, d, e, f in summary_table],
            "</table>",
        ]
    for title, figs in sections:
        parts.append(f"<h2>{esc(title)}</h2><div class='figures'>")
        for caption, file in figs:
            if not file:  # a note where a figure could not be drawn
                parts.append(f"<p>{esc(caption)}</p>")
                continue
            vector = esc(str(Path(file).with_suffix(".svg")))  # written beside the PNG by save()
            parts.append(f"<figure><a href='{vector}'><img src='{esc(file)}' alt='{esc(caption)}'></a>"
                         f"<figcaption>{esc(caption)} · <a href='{vector}'>SVG</a></figcaption></figure>")
        parts.append("</div>")
    return "\n".join(parts)


def _or_dash(compute: Callable[[], str]) -> str:
    """A table cell, or "-" where the statistic is not defined (one stimulus, every row NaN)."""
    try:
        return compute()
    except UnitrecError:
        return "-"

