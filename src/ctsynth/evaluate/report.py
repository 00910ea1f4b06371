"""The report folder: ``metrics.json`` and a self-contained ``report.html``.

The HTML has no external scripts, styles, fonts or images: slices and plots are PNGs drawn with matplotlib
(:mod:`.figures`) embedded as base64 data URIs, so the file opens offline and can be mailed.
Both files are written into a temporary folder that replaces ``out`` only when complete.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..io.atomic import atomic_dir
from .features import HIST_EDGES, VolumeSummary
from .figures import hu_histograms_uri, lesion_strips_uri, slice_uri, window_to_uint8

WINDOWS = {"lung": (1500.0, -600.0), "mediastinal": (350.0, 40.0)}  # (width, level)
MONTAGE_VOLUMES = 4
VIEWS = ("axial", "coronal", "sagittal")
PANEL_WIDTH = 176  # screen pixels of an axial panel; the other views follow at the same mm per pixel


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if not np.isfinite(v):
            return "–"
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.3e}"
        return f"{v:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return html.escape(str(value))


def _display_spacing(summaries: list[VolumeSummary]) -> tuple[float, float, float]:
    """One (z, y, x) spacing in mm for every panel of a montage: the median over the volumes shown.

    All volumes are on the same evaluation grid, but each keeps its own field of view (the cache crops
    every study to its lungs), so their spacings differ a little. Showing each at its own physical size
    would give panels of different pixel sizes; showing all at the median spacing keeps every panel of a
    view the same size for real and synthetic sets, with the physical aspect (thick slices stretched in z)
    right to within the spread of the spacings."""
    spacing = np.median(np.asarray([s.spacing_mm for s in summaries], dtype=np.float64), axis=0)
    return float(spacing[0]), float(spacing[1]), float(spacing[2])


def _panel_shapes(grid: tuple[int, int, int], spacing: tuple[float, float, float]) -> dict[str, tuple[int, int]]:
    """Pixel (height, width) of each view at one common scale in mm per screen pixel, chosen so that the
    axial panel is ``PANEL_WIDTH`` pixels wide: coronal and sagittal are then as tall as the scan is long."""
    z, y, x = grid
    sz, sy, sx = spacing
    mm_per_px = x * sx / PANEL_WIDTH
    size = lambda n, mm: max(1, int(round(n * mm / mm_per_px)))  # noqa: E731
    return {"axial": (size(y, sy), size(x, sx)), "coronal": (size(z, sz), size(x, sx)),
            "sagittal": (size(z, sz), size(y, sy))}


def _resize(hu: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resample of a 2-D HU slice to ``shape`` (pixel centres aligned, edges repeated); a Gaussian
    pre-filter where an axis shrinks, so that large grids do not alias when shown small."""
    image = np.asarray(hu, dtype=np.float32)
    factors = (shape[0] / image.shape[0], shape[1] / image.shape[1])
    sigma = [max(0.0, (1.0 / f - 1.0) / 2.0) for f in factors]
    if any(sigma):
        image = ndimage.gaussian_filter(image, sigma, mode="nearest")
    rows = (np.arange(shape[0]) + 0.5) / factors[0] - 0.5
    cols = (np.arange(shape[1]) + 0.5) / factors[1] - 0.5
    coords = np.meshgrid(rows, cols, indexing="ij")
    return ndimage.map_coordinates(image, coords, order=1, mode="nearest")


def _panel(summary: VolumeSummary, view: str, window: str, shapes: dict[str, tuple[int, int]]) -> np.ndarray:
    """One view of one volume, resampled to its display size, then windowed to 8-bit grey."""
    width, level = WINDOWS[window]
    hu = summary.slices[view]
    if view != "axial":
        hu = hu[::-1]  # superior at the top
    return window_to_uint8(_resize(hu, shapes[view]), width, level)


def _img(image: np.ndarray, alt: str) -> str:
    h, w = image.shape[:2]
    return f'<img alt="{html.escape(alt)}" width="{w}" height="{h}" src="{slice_uri(image)}">'


def _figure(uri: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="{uri}">'


def _montage_table(name: str, group: list[VolumeSummary], window: str, shapes: dict[str, tuple[int, int]]) -> str:
    """One set's montage: a row per volume, the three central slices side by side at the common scale."""
    head = "".join(f"<th>{v}</th>" for v in VIEWS)
    rows = []
    for s in group:
        label = html.escape(str(s.label)) if s.label is not None else ""
        cells = "".join(f"<td>{_img(_panel(s, v, window, shapes), f'{name} {s.id} {v} {window} window')}</td>"
                        for v in VIEWS)
        rows.append(f"<tr><th class='vol'>{html.escape(s.id)}<br><span>{label}</span></th>{cells}</tr>")
    return (f"<table class='montage'><caption>{html.escape(name)}</caption><tr><th></th>{head}</tr>"
            f"{''.join(rows)}</table>")


CSS = """
body{font-family:sans-serif;margin:1.5em;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:0.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left;vertical-align:top}
th{background:#f3f3f3}
.pass{background:#dff3df}.fail{background:#f8d7d7}.na{background:#eee}
img{display:block}
table.montage img,.pair img{outline:1px solid #bbb}
.sets{display:flex;flex-wrap:wrap;gap:1em 2em;align-items:flex-start}
table.montage{border-collapse:separate;border-spacing:3px;margin:0}
table.montage caption{font-weight:bold;text-align:left;padding:0 3px 2px}
table.montage td,table.montage th{border:0;padding:0;background:none;vertical-align:middle}
table.montage tr:first-child th{font-weight:normal;font-size:12px;color:#555;text-align:center}
table.montage th.vol{font-weight:normal;font-size:11px;color:#555;text-align:right;padding-right:4px}
table.montage th.vol span{color:#888}
.pair{display:flex;gap:3px;align-items:center}.pair>img:nth-child(3){margin-left:12px}
.note{color:#555;font-size:13px}
"""


def _verdict_table(rows: list[dict]) -> str:
    out = ["<table><tr><th>metric</th><th>synthetic</th><th>real-vs-real baseline</th><th>target</th>"
           "<th>verdict</th><th>note</th></tr>"]
    for r in rows:
        cls = {"pass": "pass", "fail": "fail"}.get(r["verdict"], "na")
        out.append(f"<tr><td>{html.escape(r['metric'])}</td><td>{_fmt(r['value'])}</td><td>{_fmt(r['baseline'])}</td>"
                   f"<td>{html.escape(r['target'])}</td><td class='{cls}'>{r['verdict']}</td>"
                   f"<td>{html.escape(r.get('note') or '')}</td></tr>")
    out.append("</table>")
    return "".join(out)


def _comparison_table(sets: dict) -> str:
    names = list(sets)
    metrics = [r["metric"] for r in sets[names[0]]["verdicts"]]
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    out = [f"<table><tr><th>metric</th>{head}</tr>"]
    for k, metric in enumerate(metrics):
        cells = []
        for n in names:
            rows = [r for r in sets[n]["verdicts"] if r["metric"] == metric]
            if not rows:
                cells.append("<td>–</td>")
                continue
            r = rows[0]
            cls = {"pass": "pass", "fail": "fail"}.get(r["verdict"], "na")
            cells.append(f"<td class='{cls}'>{_fmt(r['value'])} ({r['verdict']})</td>")
        out.append(f"<tr><td>{html.escape(metric)}</td>{''.join(cells)}</tr>")
    out.append("</table>")
    return "".join(out)


def render_html(report) -> str:
    m = report.metrics
    summaries: list[VolumeSummary] = report.summaries
    by_id = {(s.group, s.id): s for s in summaries}
    groups: dict[str, list[VolumeSummary]] = {}
    for s in summaries:
        groups.setdefault(s.group, []).append(s)
    real = groups.get("train", []) + groups.get("held_out", [])
    set_names = list(m["sets"])
    inp = m["inputs"]
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
             "<title>ctsynth evaluation</title>", f"<style>{CSS}</style></head><body>",
             "<h1>ctsynth evaluation report</h1>",
             f"<p>Real: <code>{html.escape(inp['real'])}</code> ({inp['n_train']} train, {inp['n_held_out']} "
             f"held out). Synthetic: " + ", ".join(f"<b>{html.escape(n)}</b> <code>{html.escape(p)}</code> "
                                                   f"({m['sets'][n]['n']})" for n, p in inp["synthetic"].items())
             + f". Evaluation grid {tuple(inp['grid'])}, thumbnails {tuple(inp['thumbnail'])}, seed {inp['seed']}, "
               f"{m['seconds']} s.</p>"]
    for note in inp.get("notes", []):
        parts.append(f"<p class='note'>{html.escape(note)}</p>")
    parts.append("<p class='note'>Every synthetic number is computed against the real <b>training</b> set; the "
                 "baseline is the same computation for the real <b>held-out</b> set (patients the generator never "
                 "saw), at the same sample size. See docs/evaluation.md for each metric and verdict rule.</p>")
    if len(set_names) > 1:
        parts.append("<h2>Synthetic sets side by side</h2>" + _comparison_table(m["sets"]))
    for name in set_names:
        parts.append(f"<h2>Metrics: {html.escape(name)}</h2>" + _verdict_table(m["sets"][name]["verdicts"]))
        util = m["sets"][name].get("utility", {})
        if util.get("available"):
            rows = "".join(f"<tr><td>{k[4:]}</td><td>{_fmt(v['auc'])}</td><td>{_fmt(v['ci95'])}</td></tr>"
                           for k, v in util.items() if k.startswith("auc_"))
            parts.append(f"<p>AUC on held-out real ({util['n_test']} volumes, positive class "
                         f"{html.escape(util['positive_class'])}):</p><table><tr><th>trained on</th><th>AUC</th>"
                         f"<th>95% bootstrap interval</th></tr>{rows}</table>")

    shown = [("real", real[:MONTAGE_VOLUMES])] + [(n, groups.get(n, [])[:MONTAGE_VOLUMES]) for n in set_names]
    shown = [(n, g) for n, g in shown if g]
    spacing = _display_spacing([s for _, g in shown for s in g] or summaries)
    shapes = _panel_shapes(tuple(inp["grid"]), spacing)
    mm_per_px = inp["grid"][2] * spacing[2] / PANEL_WIDTH
    parts.append("<h2>Montages: central axial / coronal / sagittal slices</h2>"
                 f"<p class='note'>Every panel is shown at the median voxel spacing of the volumes shown "
                 f"({spacing[0]:.3g} × {spacing[1]:.3g} × {spacing[2]:.3g} mm, z × y × x), {mm_per_px:.2g} mm per "
                 "screen pixel in every direction, so coronal and sagittal views have their physical proportions; "
                 "slices are resampled bilinearly. Coronal and sagittal: superior at the top.</p>")
    for window, (w, lvl) in WINDOWS.items():
        parts.append(f"<h3>{window} window (W{w:g} / L{lvl:g})</h3><div class='sets'>")
        parts.extend(_montage_table(name, group, window, shapes) for name, group in shown)
        parts.append("</div>")

    centres = (HIST_EDGES[:-1] + HIST_EDGES[1:]) / 2
    series = [(g, centres, np.mean([s.histogram for s in groups[g]], axis=0))
              for g in ["train", "held_out"] + set_names if groups.get(g)]
    parts.append("<h2>HU histograms (inside the body)</h2>"
                 + _figure(hu_histograms_uri(series, "HU", "fraction of body voxels per 10 HU"), "HU histograms"))
    strips = []
    labels = sorted({str(s.label) for s in summaries})
    for label in labels:
        for g in ["real"] + set_names:
            members = real if g == "real" else groups.get(g, [])
            vals = np.asarray([s.anatomy["lesion_fraction"] for s in members if str(s.label) == label])
            if vals.size:
                strips.append((f"{g}: {label}", vals))
    parts.append("<h2>Lesion fraction inside the lungs, per class</h2>"
                 + _figure(lesion_strips_uri(strips, "lesion fraction"), "lesion fraction per set and class"))

    quantities = list(m["real_vs_real"]["anatomy_held_out"])
    head = "".join(f"<th>{html.escape(g)}</th>" for g in ["train", "held_out"] + set_names)
    rows = []
    for q in quantities:
        cells = [f"<td>{_fmt(m['sets'][set_names[0]]['anatomy']['means']['train'][q])}</td>",
                 f"<td>{_fmt(m['real_vs_real']['anatomy_held_out'][q])}</td>"]
        cells += [f"<td>{_fmt(m['sets'][n]['anatomy']['means']['synthetic'][q])}</td>" for n in set_names]
        rows.append(f"<tr><td>{html.escape(q)}</td>{''.join(cells)}</tr>")
    parts.append(f"<h2>Anatomy (means per set)</h2><table><tr><th>quantity</th>{head}</tr>{''.join(rows)}</table>")

    parts.append("<h2>Memorisation: the synthetic volumes closest to a training volume</h2>")
    for name in set_names:
        memo = m["sets"][name]["memorisation"]["ncc"]
        parts.append(f"<h3>{html.escape(name)}: threshold {memo['threshold']:.4f} (99th percentile of held-out "
                     f"real), {memo['n_flagged']} flagged</h3><p class='note'>Each pair: the synthetic volume "
                     "(axial, coronal) on the left, its nearest training volume on the right, lung window.</p>"
                     "<div class='sets'>")
        for pair in memo["worst"]:
            syn, tr = by_id.get((name, pair["id"])), by_id.get(("train", pair["nearest_train_id"]))
            if syn is None or tr is None:
                continue
            flag = "FLAGGED" if pair["flagged"] else "not flagged"
            images = "".join(_img(_panel(v, view, "lung", shapes), f"{v.group} {v.id} {view}")
                             for v in (syn, tr) for view in ("axial", "coronal"))
            parts.append(f"<div><p>{html.escape(pair['id'])} vs train {html.escape(pair['nearest_train_id'])}: "
                         f"NCC {pair['similarity']:.4f} ({flag})</p><div class='pair'>{images}</div></div>")
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(report, out: Path, *, overwrite: bool = False) -> Path:
    """Write ``out/metrics.json`` and ``out/report.html`` atomically (the folder appears whole)."""
    page = render_html(report)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        (tmp / "metrics.json").write_text(json.dumps(report.metrics, indent=2))
        (tmp / "report.html").write_text(page, encoding="utf-8")
    return Path(out)
