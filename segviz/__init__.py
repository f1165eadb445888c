"""segviz: see how classic semantic-segmentation architectures differ."""
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED_DIR = PROJECT_ROOT.parent / "shared"  # data and models read in place, never committed


def env_number(name: str, default: float, whole: bool = True, minimum: float = 0):
    """The number in environment variable ``name`` (``default`` when unset or empty); a value that is not
    one is a one-line ValueError naming the variable."""
    import os

    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = None
    if value is None or value < minimum or (whole and value != int(value)):
        kind = "a whole number" if whole else "a number"
        raise ValueError(f"{name}={raw!r}: must be {kind} of at least {minimum:g} (default {default:g})")
    return int(value) if whole else value
