import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))
# Tests run on plain torch (deterministic, no conversions) unless they choose a backend themselves
# (tests/test_backends.py, which also keeps its converted models in a throwaway cache).
os.environ.setdefault("SEGVIZ_BACKEND", "torch")

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
CAMVID = SHARED / "datasets" / "camvid"
CORAL = SHARED / "models" / "coral"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: minutes of CPU (run with -m slow)")
    config.addinivalue_line("markers", "browser: drives chromium through playwright")


@pytest.fixture(scope="session")
def camvid_root():
    if not (CAMVID / "val.txt").exists():
        pytest.skip("CamVid is not in ../shared/datasets/camvid")
    return CAMVID
