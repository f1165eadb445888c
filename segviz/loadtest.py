"""Load test a running app: N gradio_client callers, each sending R /compare requests.

``python -m segviz loadtest --url URL --clients 8 --requests 20 [--distinct] [--pid PID]`` prints
the failures (with their first line), the p50/p95 latency of the successful requests and, given
the server's pid on this machine, its resident memory after a warm-up (``--warm-up N`` requests
from one client first, not counted) and after the load, with their ratio.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field

import numpy as np
from PIL import Image


@dataclass
class LoadResult:
    requests: int
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests
    failures: list[str] = field(default_factory=list)  # one line per failed request
    rss_before_mb: float | None = None
    rss_after_mb: float | None = None

    def percentile(self, q: float) -> float | None:
        if not self.latencies:
            return None
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, max(0, math.ceil(q / 100 * len(xs)) - 1))]  # nearest rank

    def summary(self) -> str:
        p50, p95 = self.percentile(50), self.percentile(95)
        lines = [f"requests {self.requests}, failures {len(self.failures)}",
                 "latency p50 " + (f"{p50:.2f} s, p95 {p95:.2f} s" if p50 is not None else "n/a")]
        if self.rss_before_mb is not None:
            lines.append(f"server RSS {self.rss_before_mb:.0f} MB after warm-up, {self.rss_after_mb:.0f} MB after "
                         f"({self.rss_after_mb / self.rss_before_mb:.2f}x)")
        counts: dict[str, int] = {}
        for f in self.failures:
            counts[f] = counts.get(f, 0) + 1
        lines += [f"  {n} x {msg}" for msg, n in sorted(counts.items(), key=lambda kv: -kv[1])]
        return "\n".join(lines)


def rss_mb(pid: int) -> float:
    """Resident memory of a process on this machine, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise ValueError(f"no VmRSS for pid {pid}")


def default_image(folder: str) -> str:
    """A CamVid val frame when the data is here, else a synthetic 360x480 picture written into ``folder``."""
    from .ui.compare import example_images

    frames = example_images(1)
    if frames:
        return frames[0]
    y, x = np.mgrid[0:360, 0:480]
    a = np.stack([x * 255 // 479, y * 255 // 359, (x + y) % 256], -1).astype(np.uint8)
    path = os.path.join(folder, "synthetic.png")
    Image.fromarray(a).save(path)
    return path


def _variant(image: str, n: int, folder: str) -> str:
    """The image with one pixel changed, so that no cache holds its predictions."""
    a = np.array(Image.open(image).convert("RGB"))
    a[n // a.shape[1] % a.shape[0], n % a.shape[1]] ^= 0xFF
    path = os.path.join(folder, f"distinct-{n}.png")
    Image.fromarray(a).save(path)
    return path


def run(url: str, clients: int = 8, requests: int = 20, distinct: bool = False, pid: int | None = None,
        image: str | None = None, models: list[str] | None = None, warm_up: int = 1) -> LoadResult:
    if clients < 1 or requests < 1 or warm_up < 0:
        raise ValueError("--clients and --requests must be at least 1, --warm-up at least 0")
    if models is None:
        from .ui.compare import ready_names

        models = ready_names("camvid")
    # The pictures sent and the overlays downloaded all go to one folder, removed at the end. gradio_client
    # downloads each file through an empty folder it leaves in tempfile.gettempdir() (one per overlay: tens
    # of thousands after a few load runs), so the temporary directory points into that folder meanwhile.
    folder = tempfile.mkdtemp(prefix="segviz-load-")
    saved, tempfile.tempdir = tempfile.tempdir, folder
    try:
        return _load(url, clients, requests, distinct, pid, image or default_image(folder), models, warm_up, folder)
    finally:
        tempfile.tempdir = saved
        shutil.rmtree(folder, ignore_errors=True)


def _load(url, clients, requests, distinct, pid, image, models, warm_up, folder) -> LoadResult:
    from gradio_client import Client, handle_file

    result = LoadResult(clients * requests)
    lock = threading.Lock()
    if warm_up:  # models loaded, backends chosen, caches in use: the memory the load is compared with
        client = Client(url, verbose=False, download_files=folder)
        for i in range(warm_up):
            path = _variant(image, clients * requests + i, folder) if distinct else image
            client.predict(handle_file(path), models, 0.6, None, api_name="/compare")
    result.rss_before_mb = rss_mb(pid) if pid else None
    start = threading.Barrier(clients)

    def caller(k: int):
        try:
            client = Client(url, verbose=False, download_files=folder)
        except Exception as e:  # noqa: BLE001 - every failure is counted and reported
            with lock:
                result.failures += [f"connect: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"] * requests
            start.wait()
            return
        start.wait()
        for i in range(requests):
            path = _variant(image, k * requests + i, folder) if distinct else image
            t = time.perf_counter()
            try:
                out = client.predict(handle_file(path), models, 0.6, None, api_name="/compare")
                if len(out[0]) != len(models) or not all(os.path.getsize(g["image"]) > 0 for g in out[0]):
                    raise RuntimeError(f"{len(out[0])} overlays for {len(models)} models")
            except Exception as e:  # noqa: BLE001
                line = str(e).strip().splitlines()[0] if str(e).strip() else ""
                with lock:
                    result.failures.append(f"{type(e).__name__}: {line}")
                continue
            with lock:
                result.latencies.append(time.perf_counter() - t)

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    result.rss_after_mb = rss_mb(pid) if pid else None
    return result


