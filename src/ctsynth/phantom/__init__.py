"""Procedural chest CT phantoms (normal and COVID-19) with known ground truth.

``make_phantom_case(seed, label, size, depth)`` builds one case; ``make_phantom_cohort(out, n, ...)``
writes a labelled cohort. What is modelled and the HU sources: docs/phantom.md.
"""

from .case import PhantomCase, make_phantom_case
from .cohort import make_phantom_cohort
from .tissue import TISSUES

__all__ = ["PhantomCase", "make_phantom_case", "make_phantom_cohort", "TISSUES"]
