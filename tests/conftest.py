"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests run on 2-core CI machines, often beside each other; one thread per process keeps torch from
# oversubscribing the cores. (The thread count can change a float sum's last bits: tests that compare a
# subprocess's weights with this process's bit for bit give it this process's count.)
os.environ.setdefault("OMP_NUM_THREADS", "1")
# A fixed salt for the identifier tokens (ctsynth.io.identity), so tests never create ~/.config/ctsynth/id_salt.
os.environ.setdefault("CTSYNTH_ID_SALT", "ctsynth-tests")

REAL_CT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real-ct"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    """(cache, run) of the tiny config trained to the end, once per test session, shared by the tests that
    only read it."""
    from train_fixtures import train_tiny_run

    return train_tiny_run(tmp_path_factory.mktemp("tiny_run"))


@pytest.fixture
def real_ct() -> Path:
    """The folder of real CT files beside the project (../shared/data/real-ct); skips where absent."""
    if not REAL_CT.is_dir():
        pytest.skip(f"real CT test files not found at {REAL_CT} (they sit beside the project, not in it)")
    return REAL_CT
