"""Where the organs sit, in mm, derived from a case's parameters (no voxels yet).

The chest is built from the outside in: body outline -> skin -> subcutaneous fat -> muscle -> rib zone ->
thoracic cavity. The spine sits at the back of the cavity, the mediastinum in the middle, the heart
anterior-left on the diaphragm, and the two lungs fill the rest of the cavity above the diaphragm domes.
The tubular structures (aorta, great vessels, trachea, oesophagus, pulmonary arteries and veins) are
centre lines with radii.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .geometry import smooth_path


@dataclass
class Tube:
    """A tube along a smooth path: ``points`` (n, 3) in mm (x, y, z) and ``radii`` (n,) in mm."""

    points: np.ndarray
    radii: np.ndarray
    tissue: str
    name: str = ""

    def segments(self, extra_mm: float = 0.0):
        return self.points[:-1], self.points[1:], self.radii[:-1] + extra_mm, self.radii[1:] + extra_mm


def make_tube(control: list[tuple[float, float, float]], radii: list[float], tissue: str, step: float = 4.0,
              name: str = "") -> Tube:
    """A tube through ``control`` points, radii interpolated along the arc length."""
    control_arr = np.asarray(control, dtype=np.float64)
    path = smooth_path(control_arr, step)
    # arc-length interpolation of the control radii onto the sampled path
    c_len = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(control_arr, axis=0), axis=1))])
    p_len = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(path, axis=0), axis=1))])
    p_len *= c_len[-1] / max(p_len[-1], 1e-9)
    return Tube(path, np.interp(p_len, c_len, np.asarray(radii, dtype=np.float64)), tissue, name)


@dataclass
class Layout:
    """Derived positions of one case (mm). Built by :func:`derive_layout`."""

    body: dict[str, Any]
    cavity: dict[str, float]
    spine: dict[str, float]
    heart: dict[str, float]
    lungs: dict[str, Any]
    trachea_y: float
    carina: np.ndarray
    hila: dict[str, np.ndarray]
    bronchus_end: dict[str, np.ndarray]
    vein_root: dict[str, np.ndarray]
    tubes: list[Tube] = field(default_factory=list)


def layer_offsets(body: dict[str, Any]) -> dict[str, tuple[float, float, float]]:
    """Inward offsets (anterior, lateral, posterior) in mm of each layer boundary from the skin surface."""
    skin = body["skin"]
    fat_a, fat_l, fat_p = body["fat"], body["fat"] * body["fat_lat_factor"], body["fat"] * body["fat_post_factor"]
    m_a, m_l, m_p = body["muscle_ant"], body["muscle_lat"], body["muscle_post"]
    return {
        "skin": (skin, skin, skin),
        "fat": (skin + fat_a, skin + fat_l, skin + fat_p),
        "muscle": (skin + fat_a + m_a, skin + fat_l + m_l, skin + fat_p + m_p),
    }


def derive_layout(p: dict[str, Any]) -> Layout:
    body = p["body"]
    extent = p["extent_mm"]
    top, bottom = extent / 2 + 10.0, -extent / 2 - 10.0
    rib_zone = 2 * p["ribs"]["radius"] + 1.5
    off = layer_offsets(body)
    m_a, m_l, m_p = off["muscle"]
    # The sternum needs room in the anterior rib zone.
    c_a = m_a + max(rib_zone, p["sternum"]["thick"] + 3.0)
    c_l, c_p = m_l + rib_zone, m_p + rib_zone
    cav = {"cx": body["cx"], "cy": body["cy"], "a": body["a"] - c_l, "b_ant": body["b_ant"] - c_a,
           "b_post": body["b_post"] - c_p, "off_ant": c_a, "off_lat": c_l, "off_post": c_p}
    cav["y_ant"] = cav["cy"] - cav["b_ant"]
    cav["y_post"] = cav["cy"] + cav["b_post"]
    cav["half_ap"] = (cav["b_ant"] + cav["b_post"]) / 2

    sp = p["spine"]
    r = sp["r"]
    spine = {"x": body["cx"], "y": cav["y_post"] - 0.35 * r, "ax": 1.15 * r, "ay": 0.95 * r}
    spine["canal_y"] = spine["y"] + spine["ay"] + 8.5

    lp = p["lungs"]
    apex, recess = lp["apex_z"], lp["recess_z"]
    lungs = dict(lp)
    lungs["height"] = apex - recess

    h = p["heart"]
    # the heart scales (gently) with the chest it sits in
    k = float(np.clip((cav["a"] / 130.0) ** 0.5, 0.85, 1.1))
    heart = {"x": cav["cx"] + h["x"] * k, "y": cav["cy"] + h["y_frac"] * cav["half_ap"],
             "z": lp["dome_l_z"] + h["z_frac"] * h["c"] * k, "a": h["a"] * k, "b": h["b"] * k, "c": h["c"] * k,
             "angle": np.deg2rad(h["angle_deg"]), "fat": h["fat"], "harm": h["harm"]}

    aw = p["airway"]
    x_mid = cav["cx"]
    trachea_y = spine["y"] - spine["ay"] - 10.0 - aw["trachea_r"]
    carina_z = apex - aw["carina_frac"] * lungs["height"]
    carina = np.array([x_mid - 2.0, trachea_y + 4.0, carina_z])

    def bronchus(side: float, angle_deg: float, length: float) -> np.ndarray:
        a = np.deg2rad(angle_deg)
        return carina + np.array([side * np.sin(a) * length, 6.0, -np.cos(a) * length])

    bronchus_end = {"right": bronchus(-1, aw["right_angle_deg"], 24.0),
                    "left": bronchus(+1, aw["left_angle_deg"], 45.0)}
    med = lp["mediastinum_half"]
    hila = {"right": np.array([x_mid - med - 28.0, trachea_y + 2.0, carina_z - 22.0]),
            "left": np.array([x_mid + med + 30.0, trachea_y + 6.0, carina_z - 12.0])}
    la = np.array([heart["x"] - 10.0, heart["y"] + 0.75 * heart["b"], heart["z"] + 0.2 * heart["c"]])
    vein_root = {"right": np.array([x_mid - med - 24.0, la[1] + 4.0, la[2] + 5.0]),
                 "left": np.array([x_mid + med + 26.0, la[1] + 6.0, la[2] + 8.0])}

    layout = Layout(body=body, cavity=cav, spine=spine, heart=heart, lungs=lungs, trachea_y=trachea_y,
                    carina=carina, hila=hila, bronchus_end=bronchus_end, vein_root=vein_root)
    layout.tubes = _great_vessels(p, layout, top, bottom, la)
    return layout


def _great_vessels(p: dict[str, Any], lay: Layout, top: float, bottom: float, la: np.ndarray) -> list[Tube]:
    ao, aw = p["aorta"], p["airway"]
    sp, hz, cav = lay.spine, lay.heart, lay.cavity
    x0, ty, cz = cav["cx"], lay.trachea_y, lay.carina[2]
    ra, rd = ao["r_asc"], ao["r_desc"]
    arch_z = cz + ao["arch_frac"] * lay.lungs["height"] * 0.5 + 8.0
    asc_y = ty - ra - 18.0
    root = (hz["x"] - 0.35 * hz["a"], hz["y"] + 0.15 * hz["b"], hz["z"] + 0.45 * hz["c"])
    desc_x = x0 + sp["ax"] * 0.55 + rd * 0.6
    desc_y = sp["y"] - sp["ay"] * 0.55
    tubes = [
        make_tube([root, (x0 - 12.0, asc_y, cz - 25.0), (x0 - 9.0, asc_y, arch_z - 8.0),
                   (x0 + 2.0, ty - 6.0, arch_z + 4.0), (desc_x, desc_y - 8.0, arch_z - 6.0),
                   (desc_x, desc_y, cz - 40.0), (desc_x - 2.0, desc_y - 2.0, lay.lungs["dome_l_z"] - 20.0),
                   (x0 + 4.0, desc_y - sp["ay"] * 0.3, bottom)],
                  [ra, ra, ra, (ra + rd) / 2, rd, rd, rd * 0.95, rd * 0.9], "blood"),
        make_tube([(x0 - 6.0, asc_y + 4.0, arch_z + 6.0), (x0 - 16.0, ty - 14.0, arch_z + 40.0),
                   (x0 - 24.0, ty - 12.0, top)],
                  [6.5, 6.0, 5.5], "blood"),  # brachiocephalic trunk
        make_tube([(x0 + 4.0, ty - 12.0, arch_z + 8.0), (x0 + 14.0, ty - 10.0, arch_z + 40.0),
                   (x0 + 18.0, ty - 10.0, top)],
                  [4.5, 4.2, 4.0], "blood"),  # left common carotid
        make_tube([(desc_x - 2.0, desc_y - 10.0, arch_z + 2.0), (x0 + 28.0, ty, arch_z + 35.0),
                   (x0 + 38.0, ty + 2.0, top)],
                  [5.0, 4.8, 4.6], "blood"),  # left subclavian
        make_tube([(x0 - 34.0, ty - 14.0, top), (x0 - 30.0, asc_y + 6.0, cz - 5.0),
                   (hz["x"] - 0.55 * hz["a"], hz["y"] + 0.25 * hz["b"], hz["z"] + 0.35 * hz["c"])],
                  [8.0, 9.5, 10.0], "blood"),  # superior vena cava
    ]
    # Pulmonary trunk from the right ventricular outflow, up and back to the bifurcation below the carina.
    rvot = (hz["x"] - 0.05 * hz["a"], hz["y"] - 0.45 * hz["b"], hz["z"] + 0.55 * hz["c"])
    bif = (x0 + 8.0, ty - 12.0, cz - 14.0)
    tubes.append(make_tube([rvot, (x0 + 16.0, ty - 30.0, cz - 22.0), bif], [13.0, 13.0, 12.0], "blood"))
    tubes.append(make_tube([bif, (x0 - 14.0, ty - 2.0, cz - 18.0), tuple(lay.hila["right"])],
                           [11.0, 10.0, 9.0], "blood"))
    tubes.append(make_tube([bif, (x0 + 20.0, ty + 2.0, cz - 6.0), tuple(lay.hila["left"])], [11.0, 10.0, 9.0], "blood"))
    # Pulmonary veins into the left atrium.
    for side in ("right", "left"):
        tubes.append(make_tube([tuple(la), tuple(lay.vein_root[side])], [9.0, 7.0], "blood"))
    # Left atrium itself: a blob at the back of the heart.
    tubes.append(make_tube([tuple(la - [8.0, 0.0, 0.0]), tuple(la + [8.0, 0.0, 0.0])], [18.0, 18.0], "blood"))
    # Oesophagus: behind the trachea, left of midline, into the stomach below the left dome.
    ey = sp["y"] - sp["ay"] - 6.0
    tubes.append(make_tube([(x0 + 4.0, ey, top), (x0 + 6.0, ey, cz), (x0 + 10.0, ey - 6.0, lay.lungs["dome_l_z"]),
                            (x0 + 35.0, ey - 30.0, lay.lungs["dome_l_z"] - 30.0)], [7.0, 7.5, 7.5, 8.0], "muscle"))
    # Trachea (air column with a soft-tissue wall); the wall is the tube, the lumen painted after.
    tubes.append(make_tube([(x0 - 1.0, ty, top), (x0 - 2.0, ty + 2.0, cz + 20.0), tuple(lay.carina)],
                           [aw["trachea_r"] + aw["wall"]] * 3, "muscle", name="trachea"))
    return tubes
