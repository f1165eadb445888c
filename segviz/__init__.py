"""segviz: see how classic semantic-segmentation architectures differ."""
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED_DIR = PROJECT_ROOT.parent / "shared"  # data and models read in place, never committed
