"""The bony chest: vertebrae (2D masks per level), ribs with costal cartilage, and shoulder blades."""

from __future__ import annotations

from typing import Any

import numpy as np

from .canvas import Anatomy, paint_layers, stack_segments
from .layout import Layout, Tube, make_tube
from .tissue import TISSUES as T


def spine_maps(X: np.ndarray, Y: np.ndarray, sp: dict[str, float], cortex: float, pm: float):
    """2D label masks of a vertebra level and of a disc level (painted in order), and the region the lungs
    keep clear of. Vertebral body: cortical shell + trabecular interior; canal, pedicles, laminae,
    spinous process, and transverse processes at vertebra levels."""
    e_vb = ((X - sp["x"]) / sp["ax"]) ** 2 + ((Y - sp["y"]) / sp["ay"]) ** 2 < 1
    e_in = ((X - sp["x"]) / (sp["ax"] - cortex)) ** 2 + ((Y - sp["y"]) / (sp["ay"] - cortex)) ** 2 < 1
    d_canal = np.hypot(X - sp["x"], Y - sp["canal_y"])
    spinous = (((X - sp["x"]) / 4.5) ** 2 + ((Y - sp["canal_y"] - 26.0) / 16.0) ** 2) < 1
    pedicles = ((np.abs(X - sp["x"]) - 10.0) / 4.5) ** 2 + ((Y - sp["y"] - sp["ay"] - 3.0) / 6.5) ** 2 < 1
    arch = (d_canal < 12.5) | spinous | pedicles
    transverse = ((np.abs(X - sp["x"]) - 24.0) / 13.0) ** 2 + ((Y - sp["canal_y"] + 3.0) / 5.5) ** 2 < 1
    canal = d_canal < 7.5
    vertebra = [(e_vb, T["cortical_bone"]), (e_in, T["trabecular_bone"]), (arch | transverse, T["cortical_bone"]),
                (canal, T["csf"])]
    disc = [(e_vb, T["disc"]), (arch, T["cortical_bone"]), (canal, T["csf"])]
    excl = ((X - sp["x"]) / (sp["ax"] + 3 + pm)) ** 2 + ((Y - sp["y"]) / (sp["ay"] + 3 + pm)) ** 2 < 1
    return vertebra, disc, excl


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


def scapula_tubes(p: dict[str, Any], lay: Layout) -> tuple[np.ndarray, ...]:
    """Both shoulder blades: thin triangular bone plates on the posterolateral chest wall, outside the
    ribs, drawn as a stack of horizontal tubes (medial border vertical, lateral border converging to the
    inferior angle)."""
    cav, sc, rp = lay.cavity, p["scapula"], p["ribs"]
    zone = 2 * rp["radius"] + 1.5
    a_r = cav["a"] + zone + sc["offset"]
    b_r = cav["b_post"] + zone + sc["offset"]
    top = lay.lungs["apex_z"] - sc["top_below_apex"]
    groups = []
    for z in np.arange(top - sc["height"], top, 3.5):
        frac = (z - (top - sc["height"])) / sc["height"]          # 0 at the inferior angle
        span = sc["span_deg"] * min(1.0, 0.15 + 1.2 * frac)
        th = np.deg2rad(np.linspace(sc["theta_medial"], sc["theta_medial"] + span, 6))
        for sign in (-1.0, 1.0):
            pts = np.stack([cav["cx"] + sign * np.abs(a_r * np.cos(th)), cav["cy"] + b_r * np.sin(th),
                            np.full(len(th), z)], axis=1)
            groups.append((pts[:-1], pts[1:], np.full(len(th) - 1, sc["thick"]), np.full(len(th) - 1, sc["thick"])))
    return stack_segments(groups)


def paint_ribs_and_scapulae(anatomy: Anatomy, p: dict[str, Any]) -> None:
    """Costal cartilage, shoulder blades, rib cortex, then the marrow inside it. Ribs are thin tubes, so the
    fast flat-ended rasteriser is used (bends of a 4 mm tube leave no visible seam)."""
    labels = anatomy.labels
    allowed = ((labels == T["muscle"]) | (labels == T["fat"])) & ~anatomy.cavity
    ribs = rib_tubes(p, anatomy.layout)
    cortex = p["ribs"]["cortex"]
    hu = p["hu"]
    bone = stack_segments([t.segments() for t, kind in ribs if kind == "bone"])
    marrow = stack_segments([t.segments(-cortex) for t, kind in ribs if kind == "bone"])
    cart = stack_segments([t.segments() for t, kind in ribs if kind == "cartilage"])
    scapulae = scapula_tubes(p, anatomy.layout)
    paint_layers(anatomy, [(cart, hu["cartilage"], T["cartilage"], allowed),
                          (scapulae, hu["cortical_bone"], T["cortical_bone"], allowed),
                          (bone, hu["cortical_bone"], T["cortical_bone"], allowed),
                          (marrow, hu["trabecular_bone"], T["trabecular_bone"], allowed)])
