"""The atlas's data files: JavaScript that calls ``unitrecAtlas.<loader>(...)`` with JSON.

``write_site`` writes a site's unit-table chunks (``data/<key>/table-<k>.js``, 5,000 units
each) and detail chunks (``units-<k>.js``, 500 units each: ranked stimuli and responses,
tuning curves, receptive-field maps, synthesised images), ``write_stimuli`` the stimulus
chunks, ``write_js`` any one call (the manifest). Floats are written to 9 significant
digits where they must give a float32 back exactly (responses), to 7 elsewhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from unitrec.web.images import rf_map_png
from unitrec.web.units import SiteUnits

__all__ = ["DETAIL_CHUNK", "STIMULI_CHUNK", "TABLE_CHUNK", "chunks", "json_values", "write_js", "write_site",
           "write_stimuli"]

STIMULI_CHUNK = 10_000
TABLE_CHUNK = 5_000
DETAIL_CHUNK = 500


def chunks(n: int, size: int) -> int:
    """How many files of ``size`` hold ``n`` items."""
    return max(0, -(-n // size))


def write_site(work: Path, entry: dict[str, Any], units: SiteUnits, site_extras: dict[int, list]) -> None:
    """A site's table and detail chunks, of the sizes its manifest ``entry`` gives; the entry
    learns whether there are RF maps and synthesised images."""
    key, n = entry["key"], entry["n_units"]
    folder, images = work / "data" / key, work / "images" / key
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(entry["n_table_chunks"]):
        lo, hi = k * entry["table_chunk"], min(n, (k + 1) * entry["table_chunk"])
        columns = {name: json_values(values[lo:hi], 7) for name, values in units.columns.items()}
        write_js(folder / f"table-{k}.js", "table", [key, k, {"start": lo, "columns": columns}], raw=True)
    maps, names = None, []
    if units.rf_maps is not None:
        names = [str(p) for p in np.asarray(units.rf_maps["polarity"].values)]
        maps = np.asarray(units.rf_maps.values).reshape(units.rf_maps.sizes["polarity"], n,
                                                       *units.rf_maps.shape[-2:])
        entry["rf_map"] = True
        entry["rf_map_polarities"] = names  # the maps side by side, left to right
        images.mkdir(parents=True, exist_ok=True)
    if site_extras:
        entry["extras"] = True
        images.mkdir(parents=True, exist_ok=True)
    written: dict[int, str] = {}
    for k in range(entry["n_detail_chunks"]):
        lo, hi = k * entry["detail_chunk"], min(n, (k + 1) * entry["detail_chunk"])
        detail: dict[str, Any] = {
            "start": lo,
            "top": json_values(units.top[lo:hi]), "top_response": json_values(units.top_response[lo:hi]),
            "bottom": json_values(units.bottom[lo:hi]),
            "bottom_response": json_values(units.bottom_response[lo:hi])}
        if units.tuning is not None and units.tuning_sem is not None:
            detail["tuning"] = json_values(units.tuning[lo:hi], 7)
            detail["tuning_sem"] = json_values(units.tuning_sem[lo:hi], 7)
        if maps is not None:
            paths = []
            size = entry["rf_size"]
            for u in range(lo, hi):
                box = None
                if entry["rf_center"] and size:
                    box = (float(units.columns["rf_center_y"][u]), float(units.columns["rf_center_x"][u]),
                           float(size[0]), float(size[-1]))
                name = f"rf-{u}.png"
                rf_map_png(maps[:, u], names, images / name, box)
                paths.append(f"images/{key}/{name}")
            detail["rf_map"] = json.dumps(paths)
        if site_extras:
            lists = []
            for u in range(lo, hi):
                shown = []
                for i, extra in site_extras.get(u, []):
                    if i not in written:
                        written[i] = f"images/{key}/{extra.kind}-{i}.png"
                        _save_png(extra.image, work / written[i])
                    shown.append({"kind": extra.kind, "image": written[i], "title": extra.title,
                                  "score": extra.score if np.isfinite(extra.score) else None, "file": extra.file})
                lists.append(shown)
            detail["extras"] = json.dumps(lists)
        write_js(folder / f"units-{k}.js", "units", [key, k, detail], raw=True)


def _save_png(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(image)).save(path)


def write_stimuli(work: Path, labels: np.ndarray, made: np.ndarray, coords: dict[str, np.ndarray]) -> None:
    for k in range(chunks(len(labels), STIMULI_CHUNK)):
        lo, hi = k * STIMULI_CHUNK, min(len(labels), (k + 1) * STIMULI_CHUNK)
        body = {"start": lo, "labels": json.dumps([str(v) for v in labels[lo:hi]], ensure_ascii=False),
                "thumb": json.dumps([bool(v) for v in made[lo:hi]]),
                "coords": {name: json_values(values[lo:hi]) for name, values in coords.items()}}
        write_js(work / "data" / f"stimuli-{k}.js", "stimuli", [k, body], raw=True)


def json_values(values: np.ndarray, digits: int = 9) -> str:
    """JSON text of an array (any shape) of numbers or text; NaN as null; floats rounded to
    ``digits`` significant digits (9 give a float32 back exactly; 7 are as many as it holds)."""
    values = np.asarray(values)
    if values.dtype.kind in "iub":
        return json.dumps(values.astype(np.int64).tolist())
    if values.dtype.kind == "f":
        x = values.astype(np.float64)
        finite = np.isfinite(x)
        with np.errstate(all="ignore"):
            scale = 10.0 ** (digits - 1 - np.floor(np.log10(np.abs(np.where(finite & (x != 0), x, 1.0)))))
            rounded = np.where(finite, np.round(x * scale) / scale, 0.0)
        if finite.all():
            return json.dumps(rounded.tolist())
        items = rounded.astype(object)
        items[~finite] = None
        return json.dumps(items.tolist())
    return json.dumps(np.asarray(values, dtype=str).tolist(), ensure_ascii=False)


def write_js(path: Path, loader: str, args: list[Any], *, raw: bool = False) -> None:
    """``unitrecAtlas.<loader>(arg, ...);`` — dict values that are already JSON text go in as they are."""
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [_raw_json(a) if raw and isinstance(a, dict) else json.dumps(a, ensure_ascii=False, allow_nan=False)
             for a in args]
    text = f"unitrecAtlas.{loader}({', '.join(parts)});\n"
    path.write_text(text.replace("</", "<\\/"), encoding="utf-8")  # no "</script>" inside a script


def _raw_json(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {_raw_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        return value  # already JSON
    return json.dumps(value, allow_nan=False)
