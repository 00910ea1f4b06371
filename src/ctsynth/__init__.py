"""ctsynth: realistic synthetic 3D chest CT (COVID-19 and normal) from a few hundred real scans."""

from .errors import CTSynthError
from .volume import CTVolume

__all__ = ["CTSynthError", "CTVolume"]
__version__ = "0.1.0"
