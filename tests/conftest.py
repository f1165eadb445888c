import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))
# Tests run on plain torch (deterministic, no conversions) unless they choose a backend themselves
# (tests/test_backends.py, which also keeps its converted models in a throwaway cache).
os.environ.setdefault("SEGVIZ_BACKEND", "torch")
# What the tests, and the apps and commands they start, write to the temporary directory (Gradio's
# cache, overlays, uploads, downloads) goes to one folder that is removed when the session ends.
SESSION_TMP = tempfile.mkdtemp(prefix="segviz-tests-")
tempfile.tempdir = os.environ["TMPDIR"] = SESSION_TMP
os.environ["GRADIO_TEMP_DIR"] = os.path.join(SESSION_TMP, "gradio")

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
CAMVID = SHARED / "datasets" / "camvid"
CORAL = SHARED / "models" / "coral"


def pytest_unconfigure(config):
    shutil.rmtree(SESSION_TMP, ignore_errors=True)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: minutes of CPU (run with -m slow)")
    config.addinivalue_line("markers", "browser: drives chromium through playwright")


@pytest.fixture(scope="session")
def camvid_root():
    if not (CAMVID / "val.txt").exists():
        pytest.skip("CamVid is not in ../shared/datasets/camvid")
    return CAMVID


def start_app(**env_vars):
    """``python app.py`` on a free port with extra environment variables; returns (url, process).
    Its output goes to a temporary file (a pipe nobody reads would fill up and stall the server)."""
    import socket
    import subprocess
    import sys
    import tempfile
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "SEGVIZ_PORT": str(port), **env_vars}
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return f"http://127.0.0.1:{port}/", proc
        except OSError:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(log.read().decode(errors="replace")[-2000:])
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("app.py did not start listening within 120 s")
