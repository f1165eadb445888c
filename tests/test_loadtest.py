"""`python -m segviz loadtest` against a real `python app.py`, at a small size."""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from segviz.loadtest import LoadResult
from segviz.ui.compare import ready_names

ROOT = Path(__file__).resolve().parent.parent
READY = ready_names("camvid")


def start_app(**env_vars):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "SEGVIZ_PORT": str(port), **env_vars}
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("app.py exited")
            time.sleep(0.5)
    return f"http://127.0.0.1:{port}/", proc


@pytest.fixture(scope="module")
def app_server():
    url, proc = start_app()
    yield url, proc.pid
    proc.terminate()
    proc.wait(20)


@pytest.mark.skipif(not READY, reason="no bundled weights yet")
def test_loadtest_cli_two_clients_two_requests_no_failures(app_server):
    url, pid = app_server
    out = subprocess.run([sys.executable, "-m", "segviz", "loadtest", "--url", url, "--clients", "2",
                          "--requests", "2", "--distinct", "--pid", str(pid), "--models", ",".join(READY[:2])],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "requests 4, failures 0" in out.stdout
    assert "latency p50" in out.stdout and "server RSS" in out.stdout


def test_summary_counts_failures_and_percentiles():
    r = LoadResult(4, latencies=[1.0, 2.0, 3.0], failures=["AppError: queue is full"])
    assert r.percentile(50) == 2.0 and r.percentile(95) == 3.0
    text = r.summary()
    assert "requests 4, failures 1" in text and "1 x AppError: queue is full" in text


@pytest.mark.slow
@pytest.mark.skipif(not READY, reason="no bundled weights yet")
def test_a_full_queue_answers_with_the_queue_message():
    """SEGVIZ_QUEUE=1: of 6 simultaneous uncached requests, those that find the queue full are told so."""
    from segviz import loadtest

    url, proc = start_app(SEGVIZ_QUEUE="1")
    try:
        r = loadtest.run(url, clients=6, requests=1, distinct=True, models=READY)
    finally:
        proc.terminate()
        proc.wait(20)
    assert r.latencies, r.summary()  # some were answered
    assert r.failures and all("queue is full" in f.lower() for f in r.failures), r.summary()
