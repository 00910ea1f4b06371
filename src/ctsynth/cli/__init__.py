"""The `ctsynth` command: a thin layer that parses arguments, calls the library and turns errors into one line.

Each sub-command lives in its own module here with ``register(subparsers)``, which adds its parser and sets
``func`` to a ``run(args) -> int`` function. Heavy imports (torch, MONAI) happen inside ``run`` so that
``ctsynth --help`` and the I/O commands start fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import CTSynthError

COMMAND_MODULES = ("phantom", "inspect", "convert", "prepare", "train", "generate", "upscale", "estimate", "evaluate", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctsynth",
        description="Synthetic 3D chest CT (COVID-19 and normal) from a few hundred real scans.",
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"ctsynth {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CTSynthError as exc:
        print(f"ctsynth {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ctsynth {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        from pathlib import Path

        from ..io.atomic import disk_full_error, is_disk_full

        where = Path(exc.filename or ".")
        if is_disk_full(exc, where):  # a write outside the atomic helpers (they already say this)
            print(f"ctsynth {args.command}: error: {disk_full_error(where)}", file=sys.stderr)
            return 2
        raise
    finally:
        _close_process_group()


def _close_process_group() -> None:
    """Tear down a distributed process group (DDP ranks of ``train`` or ``generate``) while the interpreter is
    still whole: otherwise gloo's worker threads can outlive it and the rank aborts at exit ("terminate called
    without an active exception", exit -6) after its work is done."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
