"""`python -m segviz loadtest` against a real `python app.py`, at a small size."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import start_app
from segviz.loadtest import LoadResult
from segviz.ui.compare import ready_names

ROOT = Path(__file__).resolve().parent.parent
READY = ready_names("camvid")


@pytest.fixture(scope="module")
def app_server():
    url, proc = start_app()
    yield url, proc.pid
    proc.terminate()
    proc.wait(20)


@pytest.mark.slow  # starts the app and runs every model four times
@pytest.mark.skipif(not READY, reason="no bundled weights yet")
def test_loadtest_cli_two_clients_two_requests_no_failures(app_server, tmp_path):
    url, pid = app_server
    out = subprocess.run([sys.executable, "-m", "segviz", "loadtest", "--url", url, "--clients", "2",
                          "--requests", "2", "--distinct", "--pid", str(pid), "--models", ",".join(READY[:2])],
                         cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "TMPDIR": str(tmp_path), "GRADIO_TEMP_DIR": ""})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "requests 4, failures 0" in out.stdout
    assert "latency p50" in out.stdout and "MB after warm-up" in out.stdout
    # the pictures it sent and the overlays it downloaded are gone
    assert not [p.relative_to(tmp_path) for p in tmp_path.rglob("*")], list(tmp_path.rglob("*"))


def test_percentiles_are_nearest_rank():
    r = LoadResult(5, latencies=[5.0, 1.0, 4.0, 2.0, 3.0])
    assert (r.percentile(50), r.percentile(95), r.percentile(20)) == (3.0, 5.0, 1.0)  # round() gave 2.0 for p50
    assert LoadResult(30, latencies=[float(i) for i in range(1, 31)]).percentile(95) == 29.0


def test_summary_counts_failures_and_percentiles():
    r = LoadResult(4, latencies=[1.0, 2.0, 3.0], failures=["AppError: queue is full"], rss_before_mb=1000,
                   rss_after_mb=1100)
    assert r.percentile(50) == 2.0 and r.percentile(95) == 3.0
    text = r.summary()
    assert "requests 4, failures 1" in text and "1 x AppError: queue is full" in text
    assert "1000 MB after warm-up, 1100 MB after (1.10x)" in text


@pytest.mark.slow
@pytest.mark.skipif(not READY, reason="no bundled weights yet")
def test_a_full_queue_answers_with_the_queue_message():
    """SEGVIZ_QUEUE=1: of 6 simultaneous uncached requests, those that find the queue full are told so."""
    from segviz import loadtest

    url, proc = start_app(SEGVIZ_QUEUE="1")
    try:
        r = loadtest.run(url, clients=6, requests=1, distinct=True, models=READY, warm_up=0)
    finally:
        proc.terminate()
        proc.wait(20)
    assert r.latencies, r.summary()  # some were answered
    assert r.failures and all("queue is full" in f.lower() for f in r.failures), r.summary()
