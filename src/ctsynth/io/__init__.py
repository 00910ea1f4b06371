"""Readers, writers and study discovery for DICOM, NIfTI and COVID-CTset-style TIFF folders."""

from .discover import Discovery, StudyRef, discover, discover_studies
from .nifti import read_nifti, write_nifti
from .read import read_study
from .tiff import read_tiff_slices, write_tiff_slices
from .write import write_volume

__all__ = [
    "Discovery", "StudyRef", "discover", "discover_studies", "read_nifti", "write_nifti", "read_study",
    "read_tiff_slices", "write_tiff_slices", "write_volume",
]
