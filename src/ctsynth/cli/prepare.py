"""`ctsynth prepare DATA --config NAME --out PREP`: read, resample, crop and cache every study."""

from __future__ import annotations

import argparse

from ._data_args import add_data_options, series_rules


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "prepare", help="read every study, resample/crop to the config's shape, cache as int16 HU",
        description="Read every CT study under DATA, crop (lung mode) or keep the whole field of view (full "
                    "mode), resample to the config's shape, clip to its HU window and cache one int16 array "
                    "per study plus manifest.json in PREP. A rerun skips unchanged studies. Progress goes "
                    "to stderr, a summary to stdout.")
    parser.add_argument("data", metavar="DATA", help="folder of DICOM series, NIfTI files or TIFF slice folders")
    parser.add_argument("--config", default="lung", help="preset name (tiny, demo, low, lung, full) or YAML path")
    parser.add_argument("--out", required=True, metavar="PREP", help="cache folder (new, or one made with the "
                                                                    "same data config)")
    add_data_options(parser)
    parser.add_argument("--quiet", action="store_true", help="no per-study progress on stderr")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..preprocess.prepare import prepare_cache, summarise

    config = load_config(args.config)
    manifest = prepare_cache(args.data, config, args.out, labels=args.labels, metadata=args.metadata,
                             label_map=args.label_map, offset=args.offset, spacing_mm=args.spacing,
                             series=series_rules(args), skip_unreadable=args.skip_unreadable,
                             progress=not args.quiet)
    print(summarise(manifest))
    return 0
