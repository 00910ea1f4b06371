"""Which series of a DICOM study becomes its training volume, by stated rules.

A hospital study holds a scout, one or more axial series (a soft-tissue and a sharp bone or lung kernel,
thick and thin) and coronal and sagittal reformats. By default (``--series auto``) one series per study is
used, the first by these rules, in order:

1. **usable at all**: CT with image pixels, not a localizer (scout), not a single image, not a projection
   (MIP, MinIP, volume rendering);
2. **axial**: the slice normal is nearest the patient's head-foot axis (coronal and sagittal reformats, and
   slices more than 45 degrees off, are set aside; ``--series all`` reads them, reoriented to axial);
3. **complete**: every file readable and the slices form an evenly spaced stack (see dicom_geometry);
4. **soft-tissue kernel before an intermediate or unknown one, before a bone or lung (sharp) kernel**
   (:func:`kernel_class`: GE STANDARD/SOFT, Siemens B/I/Q/Br 20-45, Philips A/B/C, Canon FC01-FC29 are soft;
   BONE, LUNG, EDGE, Siemens 50 and above, Philips D/E/L/Y, Canon FC30 and above are sharp);
5. **slice thickness within the range** (default 1-3 mm, ``SeriesRules.thickness_mm``);
6. **the thinnest**; then original before derived images, more slices, the lower series number.

Every other series is set aside with the reason, which ``inspect`` shows. ``--series`` chooses otherwise:
``axial`` (every axial series), ``all`` (every readable series, reformats reoriented), a SeriesInstanceUID
(or its ``ser-`` token, as ``inspect`` prints it), or a pattern matched against SeriesDescription (``*`` and ``?`` wildcards, case-insensitive; without
wildcards, a substring).
"""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CTSynthError
from .dicom_series import DicomSeriesRef, name_files
from .identity import token

PLANES = ("sagittal", "coronal", "axial")  # by the LPS axis (x, y, z) nearest the slice normal
MAX_AXIAL_DEG = 45.0
_NAMED_UP_TO = 2  # a set-aside series of at most this many files is named by its files (a stray slice?)
_PROJECTION = {"MIP", "MINIP", "MIN IP", "MAX IP", "PROJECTION IMAGE", "VOLUME", "VR", "3D", "SSD", "AVERAGE IP"}
_UID = re.compile(r"^\d+(\.\d+)+$")
_SERIES_TOKEN = re.compile(r"^ser-[0-9a-f]{12}$")


@dataclass(frozen=True)
class SeriesRules:
    """How ``discover`` picks the series of a DICOM study (see the module docstring)."""

    mode: str = "auto"  # "auto" | "axial" | "all" | "uid" | "pattern"
    value: str = ""  # the UID or the description pattern
    thickness_mm: tuple[float, float] = (1.0, 3.0)

    def __post_init__(self) -> None:
        lo, hi = self.thickness_mm
        if not 0 < lo <= hi:
            raise CTSynthError(f"slice thickness range {lo}-{hi} mm is not increasing and positive", None,
                               "give it as MIN,MAX in mm, e.g. 1,3")
        if self.mode not in ("auto", "axial", "all", "uid", "pattern"):
            raise CTSynthError(f"unknown series choice '{self.mode}'", None,
                               "use auto, axial, all, a SeriesInstanceUID or a description pattern")


def parse_series_option(text: str | None, thickness_mm: tuple[float, float] | None = None) -> SeriesRules:
    """``--series``: None/'auto', 'axial', 'all', a UID, or a description pattern -> :class:`SeriesRules`."""
    extra = {} if thickness_mm is None else {"thickness_mm": tuple(thickness_mm)}
    value = (text or "").strip()
    if value.lower() in ("", "auto"):
        return SeriesRules(**extra)
    if value.lower() in ("axial", "all-axial", "every-axial"):
        return SeriesRules(mode="axial", **extra)
    if value.lower() in ("all", "every"):
        return SeriesRules(mode="all", **extra)
    if _UID.match(value) or _SERIES_TOKEN.match(value):  # a SeriesInstanceUID, or its token as inspect shows it
        return SeriesRules(mode="uid", value=value, **extra)
    return SeriesRules(mode="pattern", value=value, **extra)


def kernel_class(kernel: str, description: str = "") -> str:
    """'soft', 'sharp' or 'medium' (intermediate or unknown) from ConvolutionKernel (else the description)."""
    found = _classify(kernel or "", is_kernel=True)
    return found if found != "medium" else _classify(description or "", is_kernel=False)


_SHARP_WORDS = {"BONE", "BONEPLUS", "LUNG", "LUNGS", "EDGE", "SHARP"}
_SOFT_WORDS = {"STANDARD", "STND", "STD", "SOFT", "SMOOTH", "ABDOMEN", "MEDIASTINUM", "MEDIASTINAL"}


def _classify(text: str, is_kernel: bool) -> str:
    words = set(re.split(r"[^A-Z0-9]+", text.upper())) - {""}
    # GE's CHEST kernel is a sharp one; in a description 'chest' only names the body part.
    if words & (_SHARP_WORDS | ({"CHEST", "ULTRA", "HR"} if is_kernel else set())):
        return "sharp"
    if words & (_SOFT_WORDS | ({"BODY"} if is_kernel else set())):
        return "soft"
    if not is_kernel:
        return "medium"
    for word in text.split("\\"):
        word = word.strip()
        siemens = re.match(r"^[BIQHJ][a-z]?(\d{2})[a-z]?\b", word)  # B30f, Br40d, I31s, Bl57, Qr40
        if siemens:
            if word[1:2] == "l":  # Bl: lung
                return "sharp"
            number = int(siemens.group(1))
            return "soft" if number <= 45 else "sharp" if number >= 50 else "medium"
        canon = re.match(r"^FC(\d{2})$", word.upper())
        if canon:
            return "soft" if int(canon.group(1)) < 30 else "sharp"
        if word.upper() in ("A", "B", "C", "UB", "CB", "SB"):  # Philips
            return "soft"
        if word.upper() in ("D", "E", "L", "YA", "YB", "YC", "YD", "EC", "LA"):
            return "sharp"
    return "medium"


def plane_of(orientation: np.ndarray) -> tuple[str, float]:
    """('axial' | 'coronal' | 'sagittal', degrees between the slice normal and that axis)."""
    row, col = orientation[:3], orientation[3:]
    normal = np.cross(row / np.linalg.norm(row), col / np.linalg.norm(col))
    normal /= np.linalg.norm(normal)
    axis = int(np.argmax(np.abs(normal)))
    return PLANES[axis], math.degrees(math.acos(min(1.0, float(abs(normal[axis])))))


@dataclass
class SeriesChoice:
    """One series of a study and what the selection made of it (shown by ``inspect``)."""

    ref: DicomSeriesRef
    plane: str
    kernel: str
    kernel_class: str
    thickness_mm: float | None
    original: bool
    problem: str = ""  # why it cannot be read as a complete stack ("" = complete)
    used: bool = False
    why: str = ""  # why it is not used ("" when used)

    def summary(self) -> dict:
        """The JSON row ``inspect`` prints (no UIDs: the description and number name the series)."""
        return {"number": self.ref.series_number, "description": self.ref.description, "images": self.ref.n_slices,
                "plane": self.plane, "kernel": self.kernel or None, "kernel_class": self.kernel_class,
                "thickness_mm": self.thickness_mm, "used": self.used, "why_not": self.why or None}

    def name(self) -> str:
        """'series 2 'ROUTINE' (120 images)'; a series of at most ``_NAMED_UP_TO`` files names them, since it
        may be a stray slice of the series used (a file whose SeriesInstanceUID was changed or damaged)."""
        number = f"series {self.ref.series_number}" if self.ref.series_number is not None else "a series"
        desc = f" '{self.ref.description}'" if self.ref.description else ""
        files = f": {name_files(self.ref.files, self.ref.folder)}" if len(self.ref.files) <= _NAMED_UP_TO else ""
        return f"{number}{desc} ({self.ref.n_slices} image{'' if self.ref.n_slices == 1 else 's'}{files})"


def _describe(ref: DicomSeriesRef) -> SeriesChoice:
    h = ref.headers[0] if ref.headers else None
    if h is None or h.orientation is None:
        plane, off = "none", 0.0
    else:
        plane, off = plane_of(h.orientation)
    if plane != "none" and off > MAX_AXIAL_DEG - 1e-9:
        plane = "oblique"
    thickness = h.slice_thickness if h is not None and h.slice_thickness else None
    original = bool(h is not None and h.image_type and h.image_type[0].upper() == "ORIGINAL")
    kernel = h.kernel if h is not None else ""
    return SeriesChoice(ref=ref, plane=plane, kernel=kernel, kernel_class=kernel_class(kernel, ref.description),
                        thickness_mm=thickness, original=original)


def _completeness(choice: SeriesChoice) -> None:
    """Fill ``problem``: a file that cannot be read, or slices that are not one evenly spaced stack."""
    from .dicom_geometry import plan_stack

    ref = choice.ref
    if ref.unreadable:
        path, why = ref.unreadable[0]
        choice.problem = f"file {path} cannot be read ({why})"
        return
    try:
        plan = plan_stack(list(ref.headers), ref.folder)
    except CTSynthError as exc:
        choice.problem = exc.problem
        return
    if choice.thickness_mm is None:
        choice.thickness_mm = round(float(plan.z_step), 3)


def _is_projection(ref: DicomSeriesRef) -> bool:
    """MIP/MinIP/volume rendering by ImageType, or by the description where ImageType only says DERIVED
    (several consoles write 'AX MIP 10MM' as DERIVED\\SECONDARY\\AXIAL)."""
    h = ref.headers[0] if ref.headers else None
    parts = {p.upper() for p in (h.image_type if h is not None else ())}
    words = set(re.split(r"[^A-Z0-9]+", (ref.description or "").upper()))
    return bool(parts & _PROJECTION) or bool(words & {"MIP", "MINIP", "MINMIP", "VR", "VRT", "3D"})


def select_series(readable: list[DicomSeriesRef], set_aside: list[DicomSeriesRef],
                  rules: SeriesRules) -> list[SeriesChoice]:
    """Every series of one study as a :class:`SeriesChoice`, the ones to read marked ``used``."""
    choices = [_describe(ref) for ref in readable]
    aside = []
    for ref in set_aside:
        c = _describe(ref)
        c.why = ref.set_aside
        aside.append(c)
    for c in choices:
        _completeness(c)

    if rules.mode == "uid":
        for c in choices:
            c.used = rules.value in (c.ref.uid, token("ser", c.ref.uid))
            c.why = "" if c.used else "not the series asked for (--series UID)"
        return choices + aside
    if rules.mode == "pattern":
        pattern = rules.value.lower()
        wild = any(ch in pattern for ch in "*?[")
        for c in choices:
            desc = (c.ref.description or "").lower()
            c.used = fnmatch.fnmatchcase(desc, pattern) if wild else pattern in desc
            c.why = "" if c.used else f"its description does not match --series '{rules.value}'"
        return choices + aside

    candidates = []
    for c in choices:
        if _is_projection(c.ref):
            c.why = "projection images (MIP/MinIP/volume rendering), not a cross-sectional stack"
        elif c.plane != "axial" and rules.mode != "all":
            c.why = (f"{c.plane} reformat (slices are {c.plane} planes; --series all reads it reoriented to axial)"
                     if c.plane in ("coronal", "sagittal") else
                     "oblique slices (more than 45 degrees from every axis)")
        else:
            candidates.append(c)
    if rules.mode in ("axial", "all"):
        for c in candidates:
            c.used = True
        return choices + aside
    lo, hi = rules.thickness_mm
    rank = {"soft": 0, "medium": 1, "sharp": 2}

    def key(c: SeriesChoice):
        t = c.thickness_mm if c.thickness_mm is not None else math.inf
        return (bool(c.problem), rank[c.kernel_class], not (lo - 1e-6 <= t <= hi + 1e-6), t, not c.original,
                -c.ref.n_slices, c.ref.series_number if c.ref.series_number is not None else 1 << 30, c.ref.uid)

    candidates.sort(key=key)
    if candidates:
        best = candidates[0]
        best.used = True
        for c in candidates[1:]:
            c.why = _why_not(c, best, rules)
    return choices + aside


def _why_not(c: SeriesChoice, best: SeriesChoice, rules: SeriesRules) -> str:
    lo, hi = rules.thickness_mm
    if c.problem:
        return f"incomplete: {c.problem}"
    if c.kernel_class != best.kernel_class:
        kind = {"sharp": "a bone or lung (sharp) kernel", "medium": "an intermediate or unknown kernel",
                "soft": "a soft-tissue kernel"}
        return (f"{kind[c.kernel_class]} ({c.kernel or 'no ConvolutionKernel'}); the series used has "
                f"{kind[best.kernel_class]} ({best.kernel or 'no ConvolutionKernel'})")
    t, tb = c.thickness_mm, best.thickness_mm
    if t is not None and not lo <= t <= hi and tb is not None and lo <= tb <= hi:
        return f"slice thickness {t:g} mm is outside {lo:g}-{hi:g} mm"
    if t is not None and tb is not None and t > tb + 1e-6:
        return f"thicker slices ({t:g} mm) than the series used ({tb:g} mm)"
    return "the series used ranks first on the remaining rules (original images, more slices, lower series number)"


def describe_set_aside(choices: list[SeriesChoice]) -> list[str]:
    """Notes for ``inspect``: 'set aside series 604 'COR 3X3' (128 images): coronal reformat (...)'."""
    return [f"set aside {c.name()}: {c.why}" for c in choices if not c.used]


def stray_notes(choices: list[SeriesChoice], ref: DicomSeriesRef) -> list[str]:
    """The set-aside notes of series so small and so near ``ref`` (its folder) that they may be slices of it:
    reading ``ref`` lists them, and a gap in ``ref`` is refused naming their files rather than only its
    neighbours."""
    return [f"set aside {c.name()}: {c.why}" for c in choices
            if not c.used and c.ref is not ref and len(c.ref.files) <= _NAMED_UP_TO
            and {f.parent for f in c.ref.files} <= {f.parent for f in ref.files}]


def folder_of(choices: list[SeriesChoice]) -> Path:
    """The folder that holds the series of a study (the common parent of their files)."""
    import os

    files = [str(f.parent) for c in choices for f in c.ref.files]
    return Path(os.path.commonpath(files)) if files else Path(".")
