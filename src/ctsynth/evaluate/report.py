"""The report folder: ``metrics.json`` and a self-contained ``report.html``.

The HTML has no external scripts, styles, fonts or images: slices are PNGs (encoded by :mod:`.png`)
embedded as base64 data URIs, and plots are inline SVG, so the file opens offline and can be mailed.
Both files are written into a temporary folder that replaces ``out`` only when complete.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from ..io.atomic import atomic_dir
from .features import HIST_EDGES, VolumeSummary
from .png import png_data_uri, window_to_uint8

WINDOWS = {"lung": (1500.0, -600.0), "mediastinal": (350.0, 40.0)}  # (width, level)
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")
MONTAGE_VOLUMES = 4


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


def _square_pixels(image: np.ndarray, row_mm: float, col_mm: float) -> np.ndarray:
    """Nearest-neighbour resample of rows so that a pixel is as tall as it is wide in mm."""
    h = image.shape[0]
    new_h = max(1, int(round(h * row_mm / col_mm)))
    rows = np.clip(((np.arange(new_h) + 0.5) * h / new_h).astype(int), 0, h - 1)
    return image[rows]


def _views(summary: VolumeSummary, window: str) -> list[np.ndarray]:
    width, level = WINDOWS[window]
    sz, sy, sx = summary.spacing_mm
    ax = window_to_uint8(summary.slices["axial"], width, level)
    co = window_to_uint8(summary.slices["coronal"][::-1], width, level)  # superior at the top
    sa = window_to_uint8(summary.slices["sagittal"][::-1], width, level)
    return [_square_pixels(ax, sy, sx), _square_pixels(co, sz, sx), _square_pixels(sa, sz, sy)]


def _tile_row(images: list[np.ndarray], gap: int = 2) -> np.ndarray:
    h = max(i.shape[0] for i in images)
    parts = []
    for k, img in enumerate(images):
        pad = np.zeros((h, img.shape[1]), dtype=np.uint8)
        pad[: img.shape[0]] = img
        parts.append(pad)
        if k < len(images) - 1:
            parts.append(np.full((h, gap), 255, dtype=np.uint8))
    return np.concatenate(parts, axis=1)


def _montage(summaries: list[VolumeSummary], window: str) -> np.ndarray:
    rows = [_tile_row(_views(s, window)) for s in summaries]
    w = max(r.shape[1] for r in rows)
    out = []
    for k, r in enumerate(rows):
        padded = np.zeros((r.shape[0], w), dtype=np.uint8)
        padded[:, : r.shape[1]] = r
        out.append(padded)
        if k < len(rows) - 1:
            out.append(np.full((2, w), 255, dtype=np.uint8))
    image = np.concatenate(out, axis=0)
    scale = max(1, int(256 // max(image.shape[0] // max(len(rows), 1), 1)))
    scale = min(scale, 3)
    return np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)


def _img(image: np.ndarray, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="{png_data_uri(image)}">'


def _svg_lines(series: list[tuple[str, np.ndarray, np.ndarray]], xlabel: str, ylabel: str,
               width: int = 640, height: int = 260) -> str:
    left, right, top, bottom = 56, 150, 10, 36
    xs = np.concatenate([s[1] for s in series])
    ys = np.concatenate([s[2] for s in series])
    x0, x1 = float(xs.min()), float(xs.max())
    y1 = float(ys.max()) or 1.0
    px = lambda x: left + (x - x0) / max(x1 - x0, 1e-12) * (width - left - right)  # noqa: E731
    py = lambda y: top + (1 - y / y1) * (height - top - bottom)  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
             f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" '
             'fill="none" stroke="#999"/>']
    for k, (name, x, y) in enumerate(series):
        pts = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in zip(x, y))
        colour = COLOURS[k % len(COLOURS)]
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{pts}"/>')
        parts.append(f'<text x="{width - right + 8}" y="{top + 14 + 16 * k}" fill="{colour}" '
                     f'font-size="12">{html.escape(name)}</text>')
    step = 500.0 if x1 - x0 > 1000 else float(10 ** np.floor(np.log10(max(x1 - x0, 1e-9))))
    for t in np.arange(np.ceil(x0 / step) * step, x1 + 1e-9, step):
        parts.append(f'<text x="{px(t):.1f}" y="{height - bottom + 14}" font-size="10" '
                     f'text-anchor="middle">{t:.0f}</text>')
    parts.append(f'<text x="{(left + width - right) / 2}" y="{height - 4}" font-size="11" '
                 f'text-anchor="middle">{html.escape(xlabel)}</text>')
    parts.append(f'<text x="12" y="{top + (height - top - bottom) / 2}" font-size="11" text-anchor="middle" '
                 f'transform="rotate(-90 12 {top + (height - top - bottom) / 2})">{html.escape(ylabel)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _svg_strips(groups: list[tuple[str, np.ndarray]], ylabel: str, width: int = 640, height: int = 240) -> str:
    left, top, bottom = 56, 10, 60
    vals = np.concatenate([g[1] for g in groups]) if groups else np.zeros(1)
    y1 = float(np.nanmax(vals)) if vals.size and np.isfinite(vals).any() else 1.0
    y1 = y1 * 1.1 or 1.0
    slot = (width - left - 10) / max(len(groups), 1)
    py = lambda y: top + (1 - y / y1) * (height - top - bottom)  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
             f'<line x1="{left}" y1="{height - bottom}" x2="{width - 10}" y2="{height - bottom}" stroke="#999"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#999"/>']
    rng = np.random.default_rng(0)
    for k, (name, v) in enumerate(groups):
        cx = left + slot * (k + 0.5)
        colour = COLOURS[k % len(COLOURS)]
        for value in v[np.isfinite(v)]:
            jitter = rng.uniform(-slot * 0.25, slot * 0.25)
            parts.append(f'<circle cx="{cx + jitter:.1f}" cy="{py(value):.1f}" r="3" fill="{colour}" '
                         'fill-opacity="0.6"/>')
        if np.isfinite(v).any():
            m = float(np.nanmean(v))
            parts.append(f'<line x1="{cx - slot * 0.35:.1f}" x2="{cx + slot * 0.35:.1f}" y1="{py(m):.1f}" '
                         f'y2="{py(m):.1f}" stroke="black" stroke-width="2"/>')
        parts.append(f'<text x="{cx:.1f}" y="{height - bottom + 16}" font-size="10" text-anchor="middle">'
                     f'{html.escape(name)}</text>')
    for t in np.linspace(0, y1, 5):
        parts.append(f'<text x="{left - 4}" y="{py(t) + 3:.1f}" font-size="10" text-anchor="end">{t:.3g}</text>')
    parts.append(f'<text x="12" y="{top + (height - top - bottom) / 2}" font-size="11" text-anchor="middle" '
                 f'transform="rotate(-90 12 {top + (height - top - bottom) / 2})">{html.escape(ylabel)}</text>')
    parts.append("</svg>")
    return "".join(parts)


CSS = """
body{font-family:sans-serif;margin:1.5em;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:0.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left;vertical-align:top}
th{background:#f3f3f3}
.pass{background:#dff3df}.fail{background:#f8d7d7}.na{background:#eee}
.sets{display:flex;flex-wrap:wrap;gap:1.5em}.sets>div{flex:0 0 auto}
img{image-rendering:pixelated;border:1px solid #ccc}
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

    parts.append("<h2>Montages: central axial / coronal / sagittal slices</h2>")
    for window, (w, lvl) in WINDOWS.items():
        parts.append(f"<h3>{window} window (W{w:g} / L{lvl:g})</h3><div class='sets'>")
        for name, group in [("real", real)] + [(n, groups[n]) for n in set_names]:
            if group:
                parts.append(f"<div><p><b>{html.escape(name)}</b></p>"
                             f"{_img(_montage(group[:MONTAGE_VOLUMES], window), f'{name} {window} window')}</div>")
        parts.append("</div>")

    centres = (HIST_EDGES[:-1] + HIST_EDGES[1:]) / 2
    series = [(g, centres, np.mean([s.histogram for s in groups[g]], axis=0))
              for g in ["train", "held_out"] + set_names if groups.get(g)]
    parts.append("<h2>HU histograms (inside the body)</h2>"
                 + _svg_lines(series, "HU", "fraction of body voxels per 10 HU"))
    strips = []
    labels = sorted({str(s.label) for s in summaries})
    for label in labels:
        for g in ["real"] + set_names:
            members = real if g == "real" else groups.get(g, [])
            vals = np.asarray([s.anatomy["lesion_fraction"] for s in members if str(s.label) == label])
            if vals.size:
                strips.append((f"{g}: {label}", vals))
    parts.append("<h2>Lesion fraction inside the lungs, per class</h2>" + _svg_strips(strips, "lesion fraction"))

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
            image = _tile_row(_views(syn, "lung")[:2] + _views(tr, "lung")[:2], gap=4)
            flag = "FLAGGED" if pair["flagged"] else "not flagged"
            parts.append(f"<div><p>{html.escape(pair['id'])} vs train {html.escape(pair['nearest_train_id'])}: "
                         f"NCC {pair['similarity']:.4f} ({flag})</p>"
                         f"{_img(np.repeat(np.repeat(image, 2, 0), 2, 1), 'memorisation pair')}</div>")
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
