"""Readers, writers and study discovery for DICOM, NIfTI and COVID-CTset-style TIFF folders."""
