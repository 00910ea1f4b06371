"""`ctsynth demo` (being written)."""


def register(subparsers) -> None:
    """Not registered yet."""
