"""`ctsynth evaluate` end to end on phantom cohorts: metrics.json, the summary, errors, and the HTML report
opened in headless Chromium (no script errors, every image decoded)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from _evaluate_cohorts import GRID, cohort, write_cohort
from ctsynth.cli import main
from ctsynth.evaluate.figures import slice_uri, window_to_uint8

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
GRID_ARG = ",".join(map(str, GRID))


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    real = write_cohort(root / "real", cohort(0, 16))
    good = write_cohort(root / "good", cohort(100, 8))
    bad_volumes = [v.with_hu(np.asarray(v.hu, np.float32) + 150.0) for v in cohort(100, 16)[8:]]
    bad = write_cohort(root / "bad", bad_volumes)
    out = root / "report"
    argv = ["evaluate", "--real", str(real), "--synthetic", str(good), "--synthetic", str(bad), "--out", str(out),
            "--grid", GRID_ARG, "--encoder-steps", "40", "--classifier-steps", "40", "--bootstrap", "100"]
    return root, out, argv


def test_cli_writes_metrics_and_prints_a_summary(evaluated, capsys):
    root, out, argv = evaluated
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "good: 8 volumes" in printed and "bad: 8 volumes" in printed and "report.html" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["format"] == "ctsynth-evaluation/1"
    assert set(metrics["sets"]) == {"good", "bad"}
    good, bad = metrics["sets"]["good"], metrics["sets"]["bad"]
    for result in (good, bad):
        assert {"fidelity", "diversity", "anatomy", "memorisation", "utility", "verdicts"} <= set(result)
        assert all(r["verdict"] in ("pass", "fail", "n/a") for r in result["verdicts"])
    fd = lambda r: r["fidelity"]["radiomics"]["synthetic"]["frechet_distance"]  # noqa: E731
    assert fd(bad) > 3 * fd(good)
    lung_hu = {r["metric"]: r for r in bad["verdicts"]}["median lung HU difference"]
    assert lung_hu["verdict"] == "fail" and lung_hu["value"] > 100
    assert {r["metric"]: r for r in good["verdicts"]}["median lung HU difference"]["verdict"] == "pass"
    assert good["memorisation"]["ncc"]["n_flagged"] == 0
    assert (out / "report.html").stat().st_size > 10_000


def test_existing_output_is_kept_and_errors_are_one_line(evaluated, capsys):
    root, out, argv = evaluated
    if not out.exists():
        assert main(argv) == 0
    before = (out / "metrics.json").read_bytes()
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already exists" in err and "--overwrite" in err
    assert (out / "metrics.json").read_bytes() == before
    assert main(["evaluate", "--real", str(root / "real"), "--synthetic", str(root / "missing"),
                 "--out", str(root / "other")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing" in err and "fix:" in err
    assert not (root / "other").exists()


def test_slice_images_keep_every_grey_level_pixel_for_pixel():
    """A report slice is the windowed grey image itself: decoding its PNG gives back every 8-bit value at
    its pixel (no resampling, no colour map), and the window maps level -/+ width/2 to 0 and 255."""
    import base64
    import io

    from matplotlib.image import imread

    image = (np.arange(12 * 7) % 256).astype(np.uint8).reshape(12, 7)
    image[0, 0], image[-1, -1] = 0, 255
    uri = slice_uri(image)
    assert uri.startswith("data:image/png;base64,")
    decoded = imread(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])), format="png")
    assert decoded.shape[:2] == image.shape
    assert (np.rint(decoded[..., 0] * 255).astype(np.uint8) == image).all()
    assert window_to_uint8(np.array([-1350.0, -600.0, 150.0]), 1500.0, -600.0).tolist() == [0, 128, 255]


CHECK_SCRIPT = """<script>
window.__errors = [];
window.addEventListener('error', function (e) { window.__errors.push(String(e.message || (e.target && e.target.src) || e)); }, true);
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).length;
  var div = document.createElement('div');
  div.id = 'ctsynth-check';
  div.textContent = 'IMAGES=' + imgs.length + ' BROKEN=' + broken + ' ERRORS=' + window.__errors.length;
  document.body.appendChild(div);
});
</script>"""


def test_report_opens_in_headless_chromium(evaluated, tmp_path):
    root, out, argv = evaluated
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (Debian package `chromium`; .ci/run installs it)")
    if not out.exists():
        assert main(argv) == 0
    page = (out / "report.html").read_text()
    assert "<script" not in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    checked = tmp_path / "checked.html"
    checked.write_text(page.replace("<head>", "<head>" + CHECK_SCRIPT, 1))
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
           "--virtual-time-budget=5000", "--dump-dom", checked.as_uri()]
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("chromium did not finish within 120 s")
    assert "ctsynth-check" in run.stdout, run.stderr[-2000:]
    marker = run.stdout.split('id="ctsynth-check">', 1)[1].split("<", 1)[0]
    n_images = page.count("<img ")
    assert marker == f"IMAGES={n_images} BROKEN=0 ERRORS=0", marker
    assert n_images >= 6
    console_errors = [line for line in run.stderr.splitlines() if "CONSOLE" in line and "ERROR" in line.upper()
                      or "Uncaught" in line]
    assert not console_errors, console_errors


def _fake_summary(study_id: str, spacing: tuple[float, float, float], grid=(8, 16, 32)):
    from types import SimpleNamespace

    z, y, x = grid
    hu = np.linspace(-1000, 200, z * y * x, dtype=np.float32).reshape(grid)
    return SimpleNamespace(id=study_id, label="normal", spacing_mm=spacing,
                           slices={"axial": hu[z // 2], "coronal": hu[:, y // 2], "sagittal": hu[:, :, x // 2]})


def test_montage_panels_share_one_size_per_view_at_physical_aspect():
    import re

    from ctsynth.evaluate.report import PANEL_WIDTH, _display_spacing, _montage_table, _panel_shapes

    grid = (8, 16, 32)
    real = [_fake_summary("r1", (5.0, 1.0, 1.0)), _fake_summary("r2", (5.0, 1.2, 1.2))]
    synthetic = [_fake_summary("s1", (5.0, 1.1, 1.1))]
    spacing = _display_spacing(real + synthetic)
    assert spacing == (5.0, 1.1, 1.1)
    shapes = _panel_shapes(grid, spacing)
    mm_per_px = 32 * 1.1 / PANEL_WIDTH
    assert shapes["axial"] == (PANEL_WIDTH // 2, PANEL_WIDTH)
    assert shapes["coronal"] == (round(8 * 5.0 / mm_per_px), PANEL_WIDTH)  # thick slices: stretched in z
    assert shapes["sagittal"] == (shapes["coronal"][0], PANEL_WIDTH // 2)
    page = _montage_table("real", real, "lung", shapes) + _montage_table("synthetic", synthetic, "mediastinal", shapes)
    found = re.findall(r'<img alt="\S+ (\S+) (axial|coronal|sagittal) \S+ window" width="(\d+)" height="(\d+)"', page)
    assert len(found) == 9
    for study_id, view, w, h in found:
        assert (int(h), int(w)) == shapes[view], (study_id, view)


def test_slice_resize_is_bilinear_with_centred_pixels():
    from ctsynth.evaluate.report import _resize

    ramp = np.repeat(np.arange(8, dtype=np.float32)[:, None] * 100.0, 3, axis=1)
    up = _resize(ramp, (16, 3))
    expected = np.clip((np.arange(16) + 0.5) / 2 - 0.5, 0, 7) * 100.0
    assert np.allclose(up[:, 1], expected, atol=1e-3)
    flat = _resize(np.full((64, 64), -600.0, dtype=np.float32), (10, 20))
    assert flat.shape == (10, 20) and np.allclose(flat, -600.0)
