"""Per-case random parameters of the phantom: body habitus, lung shape, scan geometry, scanner.

Everything here is drawn from one seeded ``numpy.random.Generator`` and is cheap (no voxels), so tests
can check the ranges over hundreds of seeds. Lengths are in mm; ``s`` values are fractions of the
covered length (0 = inferior edge of the scan, 1 = superior edge).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import CTSynthError
from .tissue import sample_tissue_hu

PIXEL_MM_RANGE = (0.6, 0.9)   # at the reference 512 matrix; smaller matrices keep the same FOV
SLICE_MM_RANGE = (5.0, 8.0)
DEPTH_RANGE = (30, 60)
REFERENCE_MATRIX = 512
LABELS = ("normal", "covid")

# Independent random streams, so that e.g. the lesions of a COVID case never change its anatomy: the same
# seed gives the same body as "normal" and as "covid".
STREAM_ANATOMY, STREAM_TREES, STREAM_LESIONS, STREAM_NOISE = 1, 2, 3, 4


def case_rng(seed: int, stream: int) -> np.random.Generator:
    """The Generator for one stream of one case."""
    return np.random.default_rng([int(seed), stream])


def check_case_args(seed: int, label: str, size: int, depth: int | None) -> None:
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise CTSynthError(f"phantom seed must be a non-negative integer, got {seed!r}", None,
                           "pass --seed 0 or another whole number >= 0")
    if label not in LABELS:
        raise CTSynthError(f"unknown phantom label {label!r}", None, f"use one of {', '.join(LABELS)}")
    if size < 32:
        raise CTSynthError(f"phantom size must be at least 32 pixels, got {size}", None, "pass --size 32 or more")
    if depth is not None and depth < 4:
        raise CTSynthError(f"phantom depth must be at least 4 slices, got {depth}", None, "pass a depth of 4 or more")


def sample_params(seed: int, label: str = "normal", size: int = REFERENCE_MATRIX,
                  depth: int | None = None) -> dict[str, Any]:
    """All random parameters of case ``seed`` (anatomy, geometry, tissue HU, scanner)."""
    check_case_args(seed, label, size, depth)
    rng = case_rng(seed, STREAM_ANATOMY)
    u = rng.uniform
    p: dict[str, Any] = {"seed": int(seed), "label": label, "size": int(size)}

    # Body habitus: semi-axes of the outer outline, soft-tissue layers.
    body_a = u(138.0, 182.0)
    body_b = body_a * u(0.68, 0.82)
    size01 = (body_a - 138.0) / 44.0            # 0 = slim, 1 = broad: bigger bodies carry more fat
    p["body"] = {
        "a": body_a, "b_ant": body_b * u(0.98, 1.06), "b_post": body_b * u(0.94, 1.0),
        "p_post": u(2.3, 3.0), "cx": u(-6.0, 6.0), "cy": u(-4.0, 4.0),
        "harm": [(u(-0.025, 0.025), u(0, 2 * np.pi)) for _ in range(4)],
        "skin": u(1.5, 2.5), "fat": 4.0 + 14.0 * size01 + u(0.0, 8.0), "fat_post_factor": u(0.7, 1.3),
        "fat_lat_factor": u(0.6, 1.0),
        "muscle_ant": u(6.0, 14.0), "muscle_lat": u(4.0, 10.0), "muscle_post": u(15.0, 28.0),
        "top_narrow": u(0.0, 0.1),
    }

    # Field of view and pixel spacing: FOV fits the body with a margin, spacing = FOV / matrix.
    fov = REFERENCE_MATRIX * u(*PIXEL_MM_RANGE)
    fov = float(np.clip(max(fov, 2.0 * (body_a + abs(p["body"]["cx"])) * 1.04 + 12.0),
                        REFERENCE_MATRIX * PIXEL_MM_RANGE[0], REFERENCE_MATRIX * PIXEL_MM_RANGE[1]))
    p["fov_mm"] = fov
    p["pixel_mm"] = fov / size

    # Depth and slice thickness: the scan covers the lungs from just above the apices to a few cm below
    # the posterior costophrenic recesses, as a clinical chest CT does.
    lung_height = u(200.0, 260.0)
    above, below = u(5.0, 20.0), u(15.0, 45.0)
    wanted = lung_height + above + below
    if depth is None:
        depth = int(rng.integers(DEPTH_RANGE[0], DEPTH_RANGE[1] + 1))
        slice_mm = float(np.clip(wanted / depth, *SLICE_MM_RANGE))
    else:
        slice_mm = wanted / depth
    p["depth"] = int(depth)
    p["slice_mm"] = slice_mm
    extent = depth * slice_mm
    p["extent_mm"] = extent

    # Lungs: apex, domes of the diaphragm (right higher), costophrenic recesses, per-lung shape.
    apex_z = extent * 0.5 - above
    recess_z = apex_z - lung_height
    dome_r = recess_z + lung_height * u(0.2, 0.3)
    p["lungs"] = {
        "apex_z": apex_z, "recess_z": recess_z, "dome_r_z": dome_r, "dome_l_z": dome_r - u(8.0, 25.0),
        "apex_round": lung_height * u(0.35, 0.5),
        "r_scale": (u(0.95, 1.1), u(0.95, 1.1)), "l_scale": (u(0.88, 1.02), u(0.95, 1.1)),
        "harm_r": [(u(-0.05, 0.05), u(0, 2 * np.pi)) for _ in range(3)],
        "harm_l": [(u(-0.05, 0.05), u(0, 2 * np.pi)) for _ in range(3)],
        "mediastinum_half": u(2.0, 7.0), "pleura_margin": u(2.0, 4.0),
        "gravity_hu": u(20.0, 60.0), "texture_hu": u(6.0, 14.0),
    }

    # Mediastinum and heart (anterior-left, lower chest).
    p["heart"] = {
        "x": u(12.0, 35.0), "y_frac": u(-0.45, -0.2), "z_frac": u(0.45, 0.65),
        "a": u(55.0, 68.0), "b": u(36.0, 46.0), "c": u(40.0, 52.0), "angle_deg": u(25.0, 45.0),
        "fat": u(2.0, 8.0),
    }
    p["aorta"] = {"r_asc": u(13.0, 17.0), "r_desc": u(10.0, 13.0), "arch_frac": u(0.12, 0.22)}
    p["airway"] = {
        "carina_frac": u(0.3, 0.38), "trachea_r": u(8.0, 11.0), "wall": u(1.5, 2.5),
        "right_angle_deg": u(20.0, 35.0), "left_angle_deg": u(38.0, 55.0),
    }

    # Skeleton.
    p["spine"] = {
        "r": u(15.0, 19.0), "level_mm": u(22.0, 27.0), "disc_mm": u(4.0, 7.0), "phase": u(0.0, 1.0),
        "cortex": u(1.2, 2.0),
    }
    p["ribs"] = {"radius": u(3.5, 5.0), "spacing_mm": u(20.0, 26.0), "drop_mm": u(85.0, 125.0),
                 "first_below_apex": u(5.0, 20.0), "cortex": u(1.2, 2.0)}
    p["sternum"] = {"width": u(26.0, 36.0), "thick": u(9.0, 13.0)}
    gas = u(0.0, 1.0)                           # gastric fundus gas bubble, from a sliver to a large one
    p["stomach_gas"] = {"a": 8.0 + 28.0 * gas, "b": 6.0 + 22.0 * gas, "c": 4.0 + 12.0 * gas}

    p["hu"] = sample_tissue_hu(rng)
    p["scanner"] = {
        "noise_sigma": u(10.0, 25.0), "noise_correlated": u(0.2, 0.6), "noise_corr_mm": u(0.6, 1.2),
        "blur_mm": u(0.35, 0.7), "blur_z_slices": u(0.2, 0.4),
    }
    p["scapula"] = {"height": u(130.0, 165.0), "top_below_apex": u(-15.0, 10.0), "theta_medial": u(108.0, 118.0),
                    "span_deg": u(28.0, 42.0), "offset": u(4.0, 8.0), "thick": u(1.8, 2.6)}
    # Breasts in a part of the cases (supine: flattened and falling laterally).
    present = bool(u(0.0, 1.0) < 0.45)
    p["heart"]["harm"] = [(u(-0.06, 0.06), u(0, 2 * np.pi)) for _ in range(2)]   # irregular outline
    p["breasts"] = {"present": present, "x_frac": u(0.42, 0.55), "a": u(45.0, 70.0), "protrude": u(12.0, 40.0),
                    "c": u(45.0, 65.0), "z_above_dome": u(20.0, 60.0), "gland": u(0.3, 0.6)}
    return p
