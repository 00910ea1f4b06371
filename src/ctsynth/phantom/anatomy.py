"""Voxelise the chest: tissue labels and noise-free HU from a case's layout.

Slabs are drawn one axial slice at a time (2D arrays, bounded memory); the tubular structures are drawn
in 3D as voxel fractions (see geometry.rasterise_tubes) and blended over what is there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from .geometry import Grid, rasterise_path, rasterise_tubes, superellipse, tube_box
from .layout import Layout, Tube, layer_offsets, make_tube
from .tissue import TISSUES
from .trees import grow_tree, sample_points

T = TISSUES


@dataclass
class Anatomy:
    """Voxelised chest before lesions and scanner effects."""

    hu: np.ndarray          # float32 (z, y, x)
    labels: np.ndarray      # uint8 tissue codes (tissue.TISSUES)
    lung_side: np.ndarray   # uint8: 0 none, 1 right lung, 2 left lung
    cavity: np.ndarray      # bool: thoracic cavity above the diaphragm (where vessels may run)
    grid: Grid
    layout: Layout


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
    gravity = np.clip((Y - cav["y_ant"]) / (cav["y_post"] - cav["y_ant"]), 0, 1) ** 1.5 * lp["gravity_hu"]

    period = p["spine"]["level_mm"] + p["spine"]["disc_mm"]
    st = p["sternum"]
    st_top = lp["apex_z"] - 30.0
    st_bottom = lp["dome_r_z"] - 15.0
    gas = p["stomach_gas"]
    stomach = (x_mid + 0.4 * cav["a"], cav["cy"] - 0.15 * cav["half_ap"], lp["dome_l_z"] - 10.0 - gas["c"])

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
        if z > lp["apex_z"] - 10.0:
            # thoracic inlet above the lung apices: muscle, with the trachea and vessels painted later
            lab[cavity] = T["muscle"]

        # Upper abdomen under the diaphragm; the diaphragm itself is a 4 mm muscle sheet.
        dz = np.where(X < x_mid, dia["right"], dia["left"])
        lab[cavity & (z < dz)] = T["muscle"]
        abdomen = cavity & (z < dz - 4.0)
        lab[abdomen] = T["liver"]
        q_st = (((X - stomach[0]) / gas["a"]) ** 2 + ((Y - stomach[1]) / gas["b"]) ** 2
                + ((z - stomach[2]) / gas["c"]) ** 2)
        lab[abdomen & (q_st < 1)] = T["air"]

        # Heart (rotated ellipsoid, long axis to the anterior left) in its pericardial fat.
        ca_, sa_ = np.cos(hz["angle"]), np.sin(hz["angle"])
        u = (X - hz["x"]) * ca_ - (Y - hz["y"]) * sa_
        v = (X - hz["x"]) * sa_ + (Y - hz["y"]) * ca_
        zz = (z - hz["z"]) / hz["c"]
        heart = (u / hz["a"]) ** 2 + (v / hz["b"]) ** 2 + zz ** 2 < 1
        m = hz["fat"] + pm
        heart_excl = (u / (hz["a"] + m)) ** 2 + (v / (hz["b"] + m)) ** 2 + ((z - hz["z"]) / (hz["c"] + m)) ** 2 < 1
        lab[heart_excl & (lab != 0)] = T["fat"]
        lab[heart & (lab != 0)] = T["blood"]

        # Spine: vertebral body (cortex + trabecular) or disc, canal, pedicles, laminae, processes.
        e_vb = ((X - sp["x"]) / sp["ax"]) ** 2 + ((Y - sp["y"]) / sp["ay"]) ** 2
        cortex = p["spine"]["cortex"]
        e_in = ((X - sp["x"]) / (sp["ax"] - cortex)) ** 2 + ((Y - sp["y"]) / (sp["ay"] - cortex)) ** 2
        in_disc = ((z - grid.z[0]) / period + p["spine"]["phase"]) % 1.0 < p["spine"]["disc_mm"] / period
        d_canal = np.hypot(X - sp["x"], Y - sp["canal_y"])
        arch = (d_canal < 12.5)
        spinous = (((X - sp["x"]) / 4.5) ** 2 + ((Y - sp["canal_y"] - 26.0) / 16.0) ** 2) < 1
        pedicles = ((np.abs(X - sp["x"]) - 10.0) / 4.5) ** 2 + ((Y - sp["y"] - sp["ay"] - 3.0) / 6.5) ** 2 < 1
        bone_outer = arch | spinous | pedicles
        if in_disc:
            lab[e_vb < 1] = T["disc"]
        else:
            transverse = ((np.abs(X - sp["x"]) - 24.0) / 13.0) ** 2 + ((Y - sp["canal_y"] + 3.0) / 5.5) ** 2 < 1
            bone_outer |= transverse
            lab[e_vb < 1] = T["cortical_bone"]
            lab[e_in < 1] = T["trabecular_bone"]
        lab[bone_outer] = T["cortical_bone"]
        lab[d_canal < 7.5] = T["csf"]
        spine_excl = (((X - sp["x"]) / (sp["ax"] + 3 + pm)) ** 2 + ((Y - sp["y"]) / (sp["ay"] + 3 + pm)) ** 2 < 1)

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
    _paint_ribs(anatomy, p)
    return anatomy


def paint(anatomy: Anatomy, frac: np.ndarray, value: float, label: int, allowed: np.ndarray | None,
          box: tuple[slice, slice, slice] | None = None) -> None:
    """Blend ``value`` over the volume by voxel fraction (clipped to 1) inside ``box``; voxels at least half
    filled take ``label``. ``allowed`` (bool, full volume) limits where the tissue may go."""
    box = box or (slice(None),) * 3
    f = np.clip(frac[box], 0.0, 1.0)
    if allowed is not None:
        f *= allowed[box]
    hu = anatomy.hu[box]
    hu += f * (np.float32(value) - hu)
    anatomy.labels[box][f >= 0.5] = label


def _paint_tubes(anatomy: Anatomy, p: dict[str, Any], tubes: list[Tube]) -> None:
    grid, labels = anatomy.grid, anatomy.labels
    soft = (labels == T["fat"]) | (labels == T["muscle"]) | (labels == T["blood"]) | (labels == T["liver"])
    scratch = np.zeros(grid.shape, dtype=np.float32)
    aw = p["airway"]
    trachea = tubes[-1]
    jobs = [(t.segments(), p["hu"][t.tissue], T[t.tissue], soft) for t in tubes]
    jobs.append((trachea.segments(-aw["wall"]), p["hu"]["airway"], T["airway"], None))
    for segments, value, label, allowed in jobs:
        box = tube_box(grid, *segments)
        rasterise_path(grid, *segments, out=scratch)
        paint(anatomy, scratch, value, label, allowed, box)
        scratch[box] = 0.0


def rib_tubes(p: dict[str, Any], lay: Layout) -> list[tuple[Tube, str]]:
    """Twelve pairs of ribs: bony arcs from the spine round the chest wall, descending anteriorly, with
    costal cartilage at the front of ribs 1-10."""
    cav, sp = lay.cavity, lay.spine
    rp = p["ribs"]
    zone = 2 * rp["radius"] + 1.5
    a_r, b_ant, b_post = cav["a"] + zone / 2, cav["b_ant"] + zone / 2, cav["b_post"] + zone / 2
    out: list[tuple[Tube, str]] = []
    end_deg = [262.0] * 7 + [245.0, 235.0, 225.0, 205.0, 185.0]
    for i in range(12):
        z_head = lay.lungs["apex_z"] - rp["first_below_apex"] - i * rp["spacing_mm"]
        scale = (0.55, 0.8)[i] if i < 2 else 1.0
        drop = rp["drop_mm"] * ((0.35, 0.65)[i] if i < 2 else 1.0)
        theta_end = end_deg[i]
        cart_start = theta_end - 28.0 if i < 10 else theta_end
        for sign in (-1.0, 1.0):
            thetas = np.arange(100.0, cart_start + 1e-6, 10.0)
            rad = np.deg2rad(thetas)
            pts_arr = np.stack([cav["cx"] + sign * np.abs(a_r * scale * np.cos(rad)),
                                cav["cy"] + np.where(np.sin(rad) > 0, b_post, b_ant) * scale * np.sin(rad),
                                z_head - drop * ((thetas - 100.0) / 170.0) ** 1.15], axis=1)
            head = (sp["x"] + sign * (sp["ax"] + 4.0), sp["y"] + 0.3 * sp["ay"], z_head + 3.0)
            ctrl = [head] + [tuple(q) for q in pts_arr]
            out.append((make_tube(ctrl, [rp["radius"]] * len(ctrl), "cortical_bone", step=5.0), "bone"))
            if cart_start < theta_end:
                cth = np.linspace(cart_start, theta_end, 4)
                cr = np.deg2rad(cth)
                cx = cav["cx"] + sign * np.abs(a_r * scale * np.cos(cr))
                cy = cav["cy"] + b_ant * scale * np.sin(cr)
                cz = z_head - drop * ((cth - 100.0) / 170.0) ** 1.15
                ctrl_c = [tuple(pts_arr[-1])] + list(zip(cx[1:], cy[1:], cz[1:]))
                out.append((make_tube(ctrl_c, [rp["radius"] * 0.9] * len(ctrl_c), "cartilage", step=5.0),
                            "cartilage"))
    return out


def _stack(segments: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
    """Concatenate several (p0, p1, r0, r1) segment groups into one."""
    return tuple(np.concatenate([np.asarray(group[i], dtype=np.float64) for group in segments]) for i in range(4))


def _paint_layers(anatomy: Anatomy, layers: list[tuple[tuple[np.ndarray, ...], float, int, np.ndarray | None]]) -> None:
    """Rasterise and paint groups of tubes in order, re-using one scratch volume."""
    grid = anatomy.grid
    scratch = np.zeros(grid.shape, dtype=np.float32)
    for segments, value, label, allowed in layers:
        if len(segments[0]) == 0:
            continue
        box = tube_box(grid, *segments)
        rasterise_tubes(grid, *segments, out=scratch)
        paint(anatomy, scratch, value, label, allowed, box)
        scratch[box] = 0.0


def _paint_ribs(anatomy: Anatomy, p: dict[str, Any]) -> None:
    """Ribs: thin tubes, so the fast flat-ended rasteriser is used (bends of a 4 mm tube leave no visible
    seam); costal cartilage, then cortical bone, then the marrow inside it."""
    labels = anatomy.labels
    allowed = ((labels == T["muscle"]) | (labels == T["fat"])) & ~anatomy.cavity
    ribs = rib_tubes(p, anatomy.layout)
    cortex = p["ribs"]["cortex"]
    hu = p["hu"]
    bone = _stack([t.segments() for t, kind in ribs if kind == "bone"])
    marrow = _stack([t.segments(-cortex) for t, kind in ribs if kind == "bone"])
    cart = _stack([t.segments() for t, kind in ribs if kind == "cartilage"])
    _paint_layers(anatomy, [(cart, hu["cartilage"], T["cartilage"], allowed),
                            (bone, hu["cortical_bone"], T["cortical_bone"], allowed),
                            (marrow, hu["trabecular_bone"], T["trabecular_bone"], allowed)])


def draw_lung_trees(anatomy: Anatomy, p: dict[str, Any], rng: np.random.Generator) -> None:
    """Bronchi (air with thin walls) and pulmonary arteries and veins, branching through both lungs."""
    grid, lay = anatomy.grid, anatomy.layout
    spacing = (grid.slice_mm, grid.pixel_mm, grid.pixel_mm)
    origin = grid.origin_mm
    aw = p["airway"]
    walls, lumens, vessels = [], [], []
    n_points = 900
    # vessels much thinner than a pixel are invisible: stop the trees there (keeps small matrices fast)
    r_min = max(0.6, 0.25 * grid.pixel_mm)
    for code, side in ((1, "right"), (2, "left")):
        mask = anatomy.lung_side == code
        if not mask.any():
            continue
        pts_a = sample_points(rng, mask, n_points, spacing, origin)
        pts_v = sample_points(rng, mask, n_points, spacing, origin)
        lat = np.array([-1.0 if side == "right" else 1.0, 0.0, 0.0])
        # bronchi: main bronchus from the carina, lumen radius by Murray's law down to 1 mm
        r_main = 6.5 if side == "right" else 5.8
        b0, b1, br0, br1 = grow_tree(rng, lay.carina, lay.bronchus_end[side], pts_a, r_main, max(1.0, r_min))
        wall0 = br0 + 0.5 + 0.15 * br0
        wall1 = br1 + 0.5 + 0.15 * br1
        walls.append((b0, b1, wall0, wall1))
        lumens.append((b0, b1, br0, br1))
        hilum = lay.hila[side]
        a_end = hilum + 18.0 * lat + np.array([0.0, 4.0, -10.0])
        vessels.append(grow_tree(rng, hilum, a_end, pts_a, 7.0, r_min))
        v_root = lay.vein_root[side]
        v_end = v_root + 16.0 * lat + np.array([0.0, 0.0, -4.0])
        vessels.append(grow_tree(rng, v_root, v_end, pts_v, 6.0, r_min))

    labels = anatomy.labels
    lung = anatomy.lung_side > 0
    in_chest = lung | (anatomy.cavity & (labels == T["fat"]))
    vessel_segments = _stack(vessels)
    before = labels.copy() if vessels else None
    _paint_layers(anatomy, [(vessel_segments, p["hu"]["lung_vessel"], T["lung_vessel"], in_chest)])
    if before is not None:
        # vessels outside the lungs (hilum, mediastinum) are plain blood
        labels[(labels == T["lung_vessel"]) & (before != T["lung_vessel"]) & ~lung] = T["blood"]
    if walls:
        _paint_layers(anatomy, [(_stack(walls), p["hu"]["muscle"], T["muscle"], in_chest | (labels == T["blood"])),
                                (_stack(lumens), p["hu"]["airway"], T["airway"], None)])


def _linear_upsample_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) matrix of linear interpolation weights, corners aligned."""
    pos = np.linspace(0, n_in - 1, n_out)
    lo = np.minimum(np.floor(pos).astype(int), n_in - 2)
    w = (pos - lo).astype(np.float32)
    m = np.zeros((n_out, n_in), dtype=np.float32)
    m[np.arange(n_out), lo] = 1 - w
    m[np.arange(n_out), lo + 1] = w
    return m


def lung_texture(p: dict[str, Any], grid: Grid, rng: np.random.Generator) -> np.ndarray:
    """Smooth parenchymal density variation (about 8 mm blobs), zero mean, in HU, shape of the grid."""
    n = max(4, int(np.ceil(grid.size * grid.pixel_mm / 8.0)))
    coarse = rng.standard_normal((grid.depth, n, n)).astype(np.float32)
    coarse = ndimage.gaussian_filter(coarse, (0.6, 1.0, 1.0))
    coarse /= max(float(coarse.std()), 1e-6)
    up = _linear_upsample_matrix(grid.size, n)
    fine = up[None] @ coarse @ up.T[None]    # separable bilinear upsampling, slice by slice
    fine *= np.float32(p["lungs"]["texture_hu"])
    return fine
