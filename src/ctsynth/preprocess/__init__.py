"""Turning studies into model-ready tensors: resampling, lung crop, HU window, and the on-disk cache."""
