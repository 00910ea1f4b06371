"""ctsynth: realistic synthetic 3D chest CT (COVID-19 and normal) from a few hundred real scans."""

from .errors import CTSynthError
from .volume import CTVolume

__all__ = ["CTSynthError", "CTVolume", "read_study", "write_volume"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # read_study / write_volume are imported on first use so that `import ctsynth` stays light.
    if name in ("read_study", "write_volume"):
        from . import io

        return getattr(io, name)
    raise AttributeError(f"module 'ctsynth' has no attribute {name!r}")
