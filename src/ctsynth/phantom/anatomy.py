"""Voxelise the chest: tissue labels and noise-free HU from a case's layout.

Slabs are drawn one axial slice at a time (2D arrays, bounded memory); the tubular structures are drawn
in 3D as voxel fractions (see geometry.rasterise_tubes) and blended over what is there.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .canvas import Anatomy, paint
from .geometry import Grid, rasterise_path, superellipse, tube_box
from .layout import Layout, Tube, layer_offsets
from .skeleton import paint_ribs_and_scapulae, spine_maps
from .tissue import TISSUES

T = TISSUES


def _harmonics(theta: np.ndarray, harm: list[tuple[float, float]], first_order: int = 2) -> np.ndarray:
    out = np.ones_like(theta)
    for k, (amp, phase) in enumerate(harm):
        out += amp * np.cos((k + first_order) * theta + phase)
    return out


def _diaphragm(x: np.ndarray, y: np.ndarray, lay: Layout, side: str) -> np.ndarray:
    """Height (mm) of the diaphragm surface under one lung: a dome falling to the costophrenic recesses."""
    cav, lp = lay.cavity, lay.lungs
    sign = -1.0 if side == "right" else 1.0
    dome = lp["dome_r_z"] if side == "right" else lp["dome_l_z"]
    xd = cav["cx"] + sign * 0.45 * cav["a"]
    yd = cav["cy"] - 0.1 * cav["half_ap"]
    q = ((x - xd) / (0.6 * cav["a"])) ** 2 + ((y - yd) / (0.95 * cav["half_ap"])) ** 2
    drop = (dome - lp["recess_z"]) * np.clip(q, 0.0, 1.0) ** 0.9
    # the anterior recess is shallower than the posterior one
    drop *= 1.0 - 0.35 * np.clip(-(y - yd) / cav["half_ap"], 0.0, 1.0)
    return (dome - drop).astype(np.float32)


def _body_layers(X: np.ndarray, Y: np.ndarray, body: dict[str, Any], off: dict[str, tuple[float, float, float]],
                 cav: dict[str, float], pm: float, narrow: float, harm: np.ndarray):
    """One slice's skin / fat / muscle / cavity labels, the cavity and the pleural space (they only change
    with the narrowing of the upper chest, so the caller caches them)."""

    def inside(o_ant: float, o_lat: float, o_post: float, p_post: float = body["p_post"]) -> np.ndarray:
        rho = superellipse(X, Y, body["cx"], body["cy"], body["a"] * narrow - o_lat, body["b_ant"] - o_ant,
                           body["b_post"] - o_post, 2.0, p_post)
        return rho < harm

    ca, cl, cp = cav["off_ant"], cav["off_lat"], cav["off_post"]
    p_cav = max(2.0, body["p_post"] - 0.3)
    lab = np.zeros(harm.shape, dtype=np.uint8)
    lab[inside(0, 0, 0)] = T["muscle"]                      # skin
    lab[inside(*off["skin"])] = T["fat"]                    # subcutaneous fat
    lab[inside(*off["fat"])] = T["muscle"]                  # chest-wall and back muscles
    cavity = inside(ca, cl, cp, p_cav)
    lab[cavity] = T["fat"]                                  # mediastinal fat by default
    pleural = inside(ca + pm, cl + pm, cp + pm, p_cav)
    return lab, cavity, pleural


def _add_breasts(lab: np.ndarray, X: np.ndarray, Y: np.ndarray, z: float, br: dict[str, Any]) -> None:
    """Breasts: smooth mounds raised on the anterior body surface (broad base, falling laterally as when
    supine), skin over fat with a fibroglandular core."""
    rest = 1.0 - ((z - br["z"]) / br["c"]) ** 2
    if rest <= 0:
        return
    has_body = (lab != 0).any(axis=0)
    surface = Y[np.argmax(lab != 0, axis=0), 0][None, :]          # anterior skin y per column
    x = X[0]
    peak = br["protrude"] * np.sqrt(rest)
    # rounded dome over a broad base
    h = np.maximum.reduce([peak * np.clip(1.0 - ((x - bx) / br["a"]) ** 2, 0.0, 1.0) ** 0.6 for bx in br["x"]])[None, :]
    mound = has_body[None, :] & (Y >= surface - h) & (Y < surface) & (lab == 0)
    # the chest's own skin line under a mound becomes breast fat
    lab[has_body[None, :] & (h > 3.0) & (Y >= surface) & (Y < surface + 3.0) & (lab == T["muscle"])] = T["fat"]
    depth = Y - (surface - h)                                         # mm below the mound's skin
    lab[mound] = T["muscle"]                                          # skin
    lab[mound & (depth > 2.0)] = T["fat"]
    gland = mound & (h > 0.45 * peak) & (depth > 0.3 * h + 3.0) & (depth < (1.0 - 0.5 * br["gland"]) * h)
    lab[gland] = T["gland"]


def draw_anatomy(p: dict[str, Any], grid: Grid, lay: Layout) -> Anatomy:
    hu_of = p["hu"]
    body, cav, sp, hz, lp = lay.body, lay.cavity, lay.spine, lay.heart, lay.lungs
    off = layer_offsets(body)
    X = grid.x[None, :]
    Y = grid.y[:, None]
    theta = np.arctan2(Y - body["cy"], X - body["cx"])
    body_harm = _harmonics(theta, body["harm"]).astype(np.float32)

    # Mediastinal tubes push the lungs aside: rasterise them with a pleural margin, once, in 3D.
    excl = np.zeros(grid.shape, dtype=np.float32)
    for tube in lay.tubes:
        rasterise_path(grid, *tube.segments(3.0 + lp["pleura_margin"]), out=excl)
    tube_excl = excl > 0.5
    del excl

    dia = {s: _diaphragm(X, Y, lay, s) for s in ("right", "left")}
    x_mid = cav["cx"]
    lung_centre = {"right": (x_mid - 0.5 * cav["a"], cav["cy"] + 0.12 * cav["half_ap"]),
                   "left": (x_mid + 0.5 * cav["a"], cav["cy"] + 0.12 * cav["half_ap"])}
    lung_harm = {}
    for side, key in (("right", "harm_r"), ("left", "harm_l")):
        lx, ly = lung_centre[side]
        lung_harm[side] = _harmonics(np.arctan2(Y - ly, X - lx), lp[key]).astype(np.float32)
    lung_harm2 = {side: h * h for side, h in lung_harm.items()}
    pm = lp["pleura_margin"]
    layer_cache: dict[float, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    # half-width of the superior mediastinum: narrow behind the sternum, widest at the trachea and spine
    upper_mediastinum = lp["mediastinum_half"] + 6.0 + 24.0 * np.clip(
        (Y - cav["y_ant"]) / (0.75 * (cav["y_post"] - cav["y_ant"])), 0.0, 1.0) ** 1.5
    gravity = np.clip((Y - cav["y_ant"]) / (cav["y_post"] - cav["y_ant"]), 0, 1) ** 1.5 * lp["gravity_hu"]

    period = p["spine"]["level_mm"] + p["spine"]["disc_mm"]
    st = p["sternum"]
    st_top = lp["apex_z"] - 30.0
    st_bottom = lp["dome_r_z"] - 15.0
    gas = p["stomach_gas"]
    stomach = (x_mid + 0.4 * cav["a"], cav["cy"] - 0.15 * cav["half_ap"], lp["dome_l_z"] - 10.0 - gas["c"])

    # Slice-invariant 2D maps, computed once: diaphragm height, stomach and heart cross-sections, spine.
    dz = np.where(X < x_mid, dia["right"], dia["left"])
    q_stomach = ((X - stomach[0]) / gas["a"]) ** 2 + ((Y - stomach[1]) / gas["b"]) ** 2
    ca_, sa_ = np.cos(hz["angle"]), np.sin(hz["angle"])
    u = (X - hz["x"]) * ca_ - (Y - hz["y"]) * sa_
    v = (X - hz["x"]) * sa_ + (Y - hz["y"]) * ca_
    m_heart = hz["fat"] + pm
    heart_harm = _harmonics(np.arctan2(v / hz["b"], u / hz["a"]), hz["harm"]) ** 2
    q_heart = ((u / hz["a"]) ** 2 + (v / hz["b"]) ** 2) / heart_harm
    q_heart_m = ((u / (hz["a"] + m_heart)) ** 2 + (v / (hz["b"] + m_heart)) ** 2) / heart_harm
    no_pixels = np.zeros((grid.size, grid.size), dtype=bool)
    spine_vertebra, spine_disc, spine_excl = spine_maps(X, Y, sp, p["spine"]["cortex"], pm)

    breasts = None
    if p["breasts"]["present"]:
        br = p["breasts"]
        breasts = {"x": [body["cx"] + s * br["x_frac"] * body["a"] for s in (-1.0, 1.0)],
                   "z": lp["dome_r_z"] + br["z_above_dome"], "a": br["a"], "protrude": br["protrude"],
                   "c": br["c"], "gland": br["gland"]}

    labels = np.zeros(grid.shape, dtype=np.uint8)
    lung_side = np.zeros(grid.shape, dtype=np.uint8)
    cavity3 = np.zeros(grid.shape, dtype=bool)
    for k, z in enumerate(grid.z.astype(float)):
        narrow = round(1.0 - body["top_narrow"] * float(np.clip((z - (lp["apex_z"] - 60.0)) / 80.0, 0.0, 1.0)), 4)
        if narrow not in layer_cache:
            layer_cache.clear()
            layer_cache[narrow] = _body_layers(X, Y, body, off, cav, pm, narrow, body_harm)
        base, cavity, pleural = layer_cache[narrow]
        lab = base.copy()
        if breasts is not None:
            _add_breasts(lab, X, Y, z, breasts)
        if z > lp["apex_z"] - 10.0:
            # thoracic inlet above the lung apices: muscle, with the trachea and vessels painted later
            lab[cavity] = T["muscle"]

        # Upper abdomen under the diaphragm; the diaphragm itself is a 4 mm muscle sheet.
        lab[cavity & (z < dz)] = T["muscle"]
        abdomen = cavity & (z < dz - 4.0)
        lab[abdomen] = T["liver"]
        rest = 1.0 - ((z - stomach[2]) / gas["c"]) ** 2
        if rest > 0:
            lab[abdomen & (q_stomach < rest)] = T["air"]

        # Heart (rotated ellipsoid, long axis to the anterior left) in its pericardial fat.
        rest = 1.0 - ((z - hz["z"]) / hz["c"]) ** 2
        rest_m = 1.0 - ((z - hz["z"]) / (hz["c"] + m_heart)) ** 2
        heart_excl = q_heart_m < rest_m if rest_m > 0 else no_pixels
        if rest_m > 0:
            lab[heart_excl & (lab != 0)] = T["fat"]
        if rest > 0:
            lab[(q_heart < rest) & (lab != 0)] = T["blood"]

        # Spine: vertebral body (cortex + trabecular) or disc, canal, pedicles, laminae, processes.
        in_disc = ((z - grid.z[0]) / period + p["spine"]["phase"]) % 1.0 < p["spine"]["disc_mm"] / period
        for mask, code in spine_disc if in_disc else spine_vertebra:
            lab[mask] = code

        # Sternum (manubrium wider) in the anterior rib zone.
        if st_bottom < z < st_top:
            half_w = st["width"] / 2 * (1.5 if z > st_top - 45.0 else 1.0)
            sy = cav["y_ant"] - st["thick"] / 2 - 1.5
            e_st = ((X - x_mid) / half_w) ** 2 + ((Y - sy) / (st["thick"] / 2)) ** 2
            e_st_in = ((X - x_mid) / (half_w - 1.5)) ** 2 + ((Y - sy) / (st["thick"] / 2 - 1.5)) ** 2
            lab[e_st < 1] = T["cortical_bone"]
            lab[e_st_in < 1] = T["trabecular_bone"]

        # Lungs: the pleural cavity on each side of the mediastinum, above the diaphragm, below the apex.
        apex_scale = np.clip((lp["apex_z"] - z) / lp["apex_round"], 0.0, 1.0) ** 0.6
        free = pleural & ~heart_excl & ~spine_excl & ~tube_excl[k]
        for code, side, sign, scale in ((1, "right", -1.0, lp["r_scale"]), (2, "left", 1.0, lp["l_scale"])):
            if apex_scale <= 0:
                break
            lx, ly = lung_centre[side]
            ax_l = 0.75 * cav["a"] * scale[0] * apex_scale
            ay_l = 1.2 * cav["half_ap"] * scale[1] * apex_scale
            rho2 = ((X - lx) / ax_l) ** 2 + ((Y - ly) / ay_l) ** 2
            medial = (X < x_mid - lp["mediastinum_half"]) if sign < 0 else (X > x_mid + lp["mediastinum_half"])
            lung = free & medial & (rho2 < lung_harm2[side]) & (z > dia[side])
            lab[lung] = T["lung"]
            lung_side[k][lung] = code
        if apex_scale < 0.9:
            # upper chest: the cage narrows with the lungs; what they leave lateral to the mediastinum is
            # chest-wall muscle (pectorals, serratus, scalenes), not fat
            wall = cavity & (lab == T["fat"]) & (np.abs(X - x_mid) > upper_mediastinum)
            lab[wall] = T["muscle"]
        labels[k] = lab
        cavity3[k] = cavity & (lab != T["liver"]) & (lab != T["air"])

    hu = np.zeros(grid.shape, dtype=np.float32)
    table = np.zeros(256, dtype=np.float32)
    for name, code in T.items():
        table[code] = hu_of[name]
    np.take(table, labels, out=hu)
    # left-sided upper-abdominal organs (spleen, stomach wall) a little less dense than the liver
    left_abd = (labels == T["liver"]) & (X > x_mid + 20.0)[None]
    hu[left_abd] -= 12.0
    hu += np.where(lung_side > 0, gravity[None], 0).astype(np.float32)
    anatomy = Anatomy(hu=hu, labels=labels, lung_side=lung_side, cavity=cavity3, grid=grid, layout=lay)
    _paint_tubes(anatomy, p, lay.tubes)
    paint_ribs_and_scapulae(anatomy, p)
    return anatomy


def _paint_tubes(anatomy: Anatomy, p: dict[str, Any], tubes: list[Tube]) -> None:
    grid, labels = anatomy.grid, anatomy.labels
    soft = (labels == T["fat"]) | (labels == T["muscle"]) | (labels == T["blood"]) | (labels == T["liver"])
    scratch = np.zeros(grid.shape, dtype=np.float32)
    aw = p["airway"]
    trachea = next(t for t in tubes if t.name == "trachea")
    jobs = [(t.segments(), p["hu"][t.tissue], T[t.tissue], soft) for t in tubes]
    jobs.append((trachea.segments(-aw["wall"]), p["hu"]["airway"], T["airway"], None))
    for segments, value, label, allowed in jobs:
        box = tube_box(grid, *segments)
        rasterise_path(grid, *segments, out=scratch)
        paint(anatomy, scratch, value, label, allowed, box)
        scratch[box] = 0.0
