"""The readers under the mutation fuzzer (ctsynth.io.fuzz): a few hundred seeded cases, none of them may end
in a traceback, a silent drop, non-finite HU, an accepted absurd geometry, a refusal that does not name the
corrupt file, or a library warning on stderr. benchmarks/fuzz_readers.py runs the long version."""

from __future__ import annotations

import numpy as np
import pytest

from ctsynth.io.fuzz import BAD_OUTCOMES, Case, classify, make_case, read_as_user, run_cases, walk_elements


@pytest.mark.parametrize("fmt,start,count", [("dicom", start, 25) for start in range(0, 200, 25)]
                         + [("nifti", 0, 100), ("tiff", 0, 100)])
def test_no_bad_outcome(fmt: str, start: int, count: int) -> None:
    summary = run_cases(range(start, start + count), seed=20261204, fmt=fmt)
    bad = {o: summary.counts[o] for o in BAD_OUTCOMES if summary.counts[o]}
    assert not bad, f"{bad}: {summary.examples}"
    # The cases are not all trivially refused or trivially identical: both kinds occur.
    assert summary.counts["clean_error"] > count // 4
    assert summary.counts["identical"] + summary.counts["changed"] + summary.counts["noted"] > 0


def test_cases_are_reproducible(tmp_path) -> None:
    a = make_case(7, 3, tmp_path / "a", "dicom")
    b = make_case(7, 3, tmp_path / "b", "dicom")
    assert a.mutation == b.mutation and a.target.name == b.target.name
    assert [p.read_bytes() for p in sorted(a.source.iterdir())] == [p.read_bytes() for p in sorted(b.source.iterdir())]
    assert np.array_equal(a.expected.hu, b.expected.hu)


def test_the_classifier_sees_each_bad_outcome(tmp_path) -> None:
    """The judge itself can fail: fake readers that misbehave are sorted into the bad outcomes."""
    case = make_case(0, 1, tmp_path, "nifti")
    from ctsynth.volume import CTVolume

    def volume(**changes) -> CTVolume:
        base = dict(hu=np.asarray(case.expected.hu, dtype=np.float32), spacing_mm=case.expected.spacing_mm,
                    origin_mm=case.expected.origin_mm, direction=case.expected.direction)
        base.update(changes)
        return CTVolume(**base)

    def raise_(exc):
        raise exc

    nan = np.asarray(case.expected.hu, dtype=np.float32).copy()
    nan[0, 0, 0] = np.nan
    from ctsynth.errors import CTSynthError

    assert classify(case, lambda p: raise_(KeyError("x"))).outcome == "traceback"
    assert classify(case, lambda p: volume(hu=nan)).outcome == "nonfinite_hu"
    assert classify(case, lambda p: volume(spacing_mm=(1e6, 0.7, 0.7))).outcome == "absurd_geometry"
    assert classify(case, lambda p: volume(hu=np.asarray(case.expected.hu)[:1])).outcome == "silent_drop"
    assert classify(case, lambda p: raise_(CTSynthError("bad", "/elsewhere"))).outcome == "error_unnamed"
    assert classify(case, lambda p: raise_(CTSynthError("bad", case.target))).outcome == "clean_error"
    assert classify(case, lambda p: volume()).outcome == "identical"
    assert classify(case, read_as_user).outcome in ("clean_error", "identical", "changed", "noted")


def test_walk_elements_finds_every_top_level_element(tmp_path) -> None:
    import pydicom

    case = make_case(0, 0, tmp_path, "dicom")
    clean = next(p for p in sorted(case.source.iterdir()) if p != case.target)
    tags = [e.tag for e in walk_elements(clean.read_bytes())]
    ds = pydicom.dcmread(clean)
    expected = [(t.group, t.element) for t in ds.file_meta.keys()] + [(t.group, t.element) for t in ds.keys()]
    assert tags == expected
