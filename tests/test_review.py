"""``segviz review`` on real CamVid frames: the database, resuming, bad data, scores equal to eval."""
import csv
import json
import multiprocessing
import shutil
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from segviz import review
from segviz.cli import main

FCN8S = "fcn8s_mobilenet_edgetpu.camvid"


@pytest.fixture(scope="module")
def reviewed(camvid_root, tmp_path_factory):
    """Two val frames with FCN-8s, with and without the CRF: a run cancelled after the first frame, then resumed."""
    db = tmp_path_factory.mktemp("review") / "review.sqlite"
    asked = []

    def cancel_after_one():
        asked.append(1)
        return len(asked) > 1

    from segviz.crf import AVAILABLE, CRFParams

    crf = CRFParams() if AVAILABLE else None  # one forward per frame serves the rows with and without the CRF
    store = review.Store(db)
    source = review.camvid_source(camvid_root, "val", 2)
    with pytest.raises(review.Cancelled, match="after 1 of 2 images"):
        review.run(source, [FCN8S], store, crf, cancelled=cancel_after_one)
    resumed = review.run(source, [FCN8S], store, crf)
    out = db.parent / "scores.csv"
    args = ["review", "--data", str(camvid_root), "--limit", "2", "--models", FCN8S, "--db", str(db), "--json",
            "--csv", str(out)]
    yield db, args, out, resumed
    store.close()


def _cli(capsys, args):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_each_models_training_frames_are_its_recipes_split(camvid_root):
    from segviz import records

    train = {p.name for p in (camvid_root / "train").iterdir()}
    val = {p.name for p in (camvid_root / "val").iterdir()}
    for r in records.all_records():
        frames = review.training_frames(r, camvid_root)
        if not r.trained_here:  # the VOC models' training frames are not on this machine
            assert frames is None
            continue
        kind, _, seq = r.metrics["train_split"].partition(":")
        if kind in ("seq", "noseq"):
            expected = {n for n in train | val if (n.split("_")[0] == seq) == (kind == "seq")}
        else:
            expected = {"train": train, "trainval": train | val}[kind]
        assert frames == expected, r.name
    assert review.training_frames(records.get(FCN8S), None) is None  # no CamVid folder: not known


def test_the_review_says_which_models_trained_on_the_images(reviewed, camvid_root, capsys, tmp_path):
    from segviz import records

    _, _, _, resumed = reviewed  # two val frames
    names = {e[0].name for e in resumed.items}
    trained = len(names & review.training_frames(records.get(FCN8S), camvid_root))
    data = review.to_json(resumed)
    assert data["models"][0]["trained_on_images"] == trained
    header, rows = review.leaderboard(data)
    assert header[-1] == "images trained on" and rows[0][-1] == trained
    # The first training frame: the text output counts it and says what that means, in one line.
    code, out, _ = _cli(capsys, ["review", "--data", str(camvid_root), "--split", "train", "--limit", "1",
                                 "--models", FCN8S, "--db", str(tmp_path / "r.sqlite")])
    row = next(line for line in out.splitlines() if line.startswith(FCN8S))
    assert code == 0 and row.split()[-1] == "1"
    assert [line for line in out.splitlines() if line.startswith("note: ")] == [
        f"note: models trained on some of these images score higher here than on frames they never saw: {FCN8S} "
        "(1 of 1)"]
    from segviz.ui.review import summary_line

    assert ("Note:" in summary_line(data)) == bool(trained)
    data["models"][0]["trained_on_images"] = 2
    assert summary_line(data).endswith(f"**Note:** {review.trained_on_note(data)}.") and f"{FCN8S} (2 of 2)" in \
        summary_line(data)
    assert review.trained_on_note({"images": 3, "models": [{"name": "a", "trained_on_images": 0},
                                                           {"name": "b", "trained_on_images": None}]}) is None


def test_an_interrupted_run_resumes_and_a_rerun_computes_nothing(reviewed, capsys):
    db, args, _, resumed = reviewed
    assert resumed.computed == len(resumed.variants()) and len(resumed.items) == 2  # the second frame's rows
    code, out, _ = _cli(capsys, args)
    again = json.loads(out)
    assert code == 0 and again["images"] == 2 and again["computed_rows"] == 0
    assert again["models"][0]["miou"] == review.to_json(resumed)["models"][0]["miou"]
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT count(*) FROM results").fetchone()[0] == 2 * len(resumed.variants())
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_json_equals_segviz_eval(reviewed, capsys, camvid_root):
    _, args, _, _ = reviewed
    one = [*args[:args.index("--limit")], "--limit", "1", *args[args.index("--limit") + 2:]]  # 1 frame: 1 forward in eval
    got = json.loads(_cli(capsys, one)[1])["models"][0]
    code, out, _ = _cli(capsys, ["eval", "--model", FCN8S, "--data", str(camvid_root), "--limit", "1", "--json"])
    want = json.loads(out)
    assert code == 0 and got["name"] == FCN8S
    for key in ("miou", "pixel_acc", "class_acc", "per_class_iou"):
        assert got[key] == want[key], key
    assert got["miou"] > 50  # a trained model, not noise
    trimap = got["trimap"]
    assert trimap["band_px"][0] == 1 and trimap["band_px"][-1] == 40
    # near the edges is where models fail: accuracy rises with the band's width towards the overall one
    assert trimap["accuracy"] == sorted(trimap["accuracy"]) and trimap["accuracy"][-1] < got["pixel_acc"]
    assert 0 < got["boundary_f"] < 100


def test_csv_has_a_row_per_image_and_model(reviewed, capsys, camvid_root):
    from segviz.data.camvid import CamVid
    from segviz.evaluate import labels_of, predict_logits
    from segviz.inference import load_model
    from segviz.metrics import confusion_matrix, scores

    _, args, out, _ = reviewed
    data = json.loads(_cli(capsys, args)[1])
    rows = [r for r in csv.DictReader(open(out)) if r["crf"] in ("False", "0", "")]  # the rows without the CRF
    assert [r["image"] for r in rows] == ["0016E5_07959.png", "0016E5_07961.png"]
    assert {r["model"] for r in rows} == {FCN8S} and set(data["classes"]) <= set(rows[0])
    # Each row's mIoU is that image's own, as a direct prediction (at the record's input scale) and count give it.
    from segviz import records

    model, scale = load_model(FCN8S), records.get(FCN8S).input_scale
    for row, (image, target) in zip(rows, CamVid(camvid_root, "val", limit=2)):
        own = scores(confusion_matrix(labels_of(predict_logits(model, image, scale=scale)), target, 11))["miou"]
        assert float(row["miou"]) == pytest.approx(own, abs=0.01), row["image"]


def test_bad_data_is_listed_and_skipped(reviewed, capsys, camvid_root, tmp_path):
    db, _, _, _ = reviewed
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir(), labels.mkdir()
    first = review.camvid_source(camvid_root, "val", 1).items[0]
    image, label = first.image, first.label
    shutil.copy(image, images / "good.png"), shutil.copy(label, labels / "good.png")  # in the database already
    shutil.copy(image, images / "lonely.png")  # no label
    shutil.copy(label, labels / "orphan.png")  # no image
    (images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    shutil.copy(label, labels / "corrupt.png")
    shutil.copy(image, images / "small.png")
    Image.fromarray(np.zeros((100, 100), np.uint8)).save(labels / "small.png")  # size mismatch
    shutil.copy(image, images / "ids.png")
    Image.fromarray(np.full((360, 480), 42, np.uint8)).save(labels / "ids.png")  # unknown label id
    args = ["review", "--images", str(images), "--labels", str(labels), "--models", FCN8S, "--db", str(db), "--json"]
    report = tmp_path / "report.html"
    code, out, err = _cli(capsys, [*args, "--report", str(report)])
    data = json.loads(out)
    assert code == 0 and data["images"] == 1 and data["computed_rows"] == 0
    reasons = {s["file"]: s["reason"] for s in data["skipped"]}
    assert set(reasons) == {"lonely.png", "orphan.png", "corrupt.png", "small.png", "ids.png"}
    assert "not a readable image" in reasons["corrupt.png"] and "480x360" in reasons["small.png"]
    assert "42" in reasons["ids.png"] and "no label" in reasons["lonely.png"]
    assert all(line.startswith("skipped ") for line in err.strip().split("\n"))
    # the HTML report lists them too, and opens offline
    page = report.read_text()
    assert not (tmp_path / "report.html.part").exists()
    assert FCN8S in page and "Pedestrian" in page and "Leaderboard" in page and "trimap" in page.lower()
    assert all(f"<td>{name}</td>" in page for name in reasons) and "http://" not in page and "https://" not in page
    # embedded: the trimap curves, one confusion matrix, and the hardest frame's input, ground truth and prediction
    assert page.count('src="data:image/') == 1 + 1 + 3 and "good.png" in page
    # bad images are remembered: the next run neither decodes them nor writes anything
    with sqlite3.connect(db) as con:
        before = con.execute("SELECT count(*) FROM results").fetchone()[0], con.execute("SELECT count(*) FROM bad").fetchone()[0]
    again = json.loads(_cli(capsys, args)[1])
    assert {s["file"] for s in again["skipped"]} == set(reasons)
    with sqlite3.connect(db) as con:
        after = con.execute("SELECT count(*) FROM results").fetchone()[0], con.execute("SELECT count(*) FROM bad").fetchone()[0]
    assert before == after and before[1] == 3


def test_bad_arguments_are_one_line_errors(capsys, tmp_path, camvid_root):
    for args, words in ((["--images", str(tmp_path)], "go together"),
                        (["--models", "fcn9s"], "no trained model"),
                        (["--set", "voc", "--data", str(tmp_path)], "not a VOC 2012 folder"),
                        (["--split", "seq:nowhere"], "unknown sequence"),
                        (["--models", "deeplabv3_mnv2.voc"], "")):
        code, out, err = _cli(capsys, ["review", "--data", str(camvid_root), "--db", str(tmp_path / "x.sqlite"), *args])
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and words in err, (args, err)
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all" * 100)
    code, _, err = _cli(capsys, ["review", "--data", str(camvid_root), "--db", str(tmp_path / "junk.sqlite")])
    assert code == 2 and "not a segviz review database" in err


def _writer(path, start, n):
    store = review.Store(path)
    for i in range(start, start + n):
        store.put([("m", "w", f"{i:04d}", "l", "s", b"png", b"cm", b"tri", b"b")])
    store.close()


def test_concurrent_writers_and_a_reader_corrupt_nothing(tmp_path):
    path = tmp_path / "shared.sqlite"
    review.Store(path).close()
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(path, start, 60)) for start in (0, 40)]  # 20 rows overlap
    for p in procs:
        p.start()
    reader = review.Store(path)
    seen = [len(reader.done("m", "w", "s")) for _ in range(20)]
    for p in procs:
        p.join()
    assert all(p.exitcode == 0 for p in procs) and seen == sorted(seen)
    assert len(reader.done("m", "w", "s")) == 100
    assert reader.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_run_cancelled_inside_a_chunk_keeps_every_finished_row(camvid_root, tmp_path):
    """Each model runs over a chunk of frames in a row: a run cancelled after the first model's frames and
    the second model's first frame stores those three rows, counts one image finished, and the rerun computes
    only the missing row."""
    models = [FCN8S, "fcn32s_mobilenet_edgetpu.camvid"]
    source = review.camvid_source(camvid_root, "val", 2)
    store = review.Store(tmp_path / "r.sqlite")
    asked = []

    def cancel_before_the_fourth_forward():
        asked.append(1)
        return len(asked) > 3

    with pytest.raises(review.Cancelled, match="after 1 of 2 images"):
        review.run(source, models, store, cancelled=cancel_before_the_fourth_forward)
    assert store.db.execute("SELECT count(*) FROM results").fetchone()[0] == 3
    resumed = review.run(source, models, store)
    assert resumed.computed == 1 and len(resumed.items) == 2
    store.close()


def test_frames_rank_worst_first(reviewed):
    _, _, _, resumed = reviewed
    by_miou = review.rank(resumed, "miou", FCN8S)
    assert [v for _, v in by_miou] == sorted(v for _, v in by_miou)
    road = review.rank(resumed, "class", FCN8S, "Road")
    assert [v for _, v in road] == sorted((v for _, v in road), reverse=True) and all(0 <= v < 100 for _, v in road)
    assert [v for _, v in review.rank(resumed, "disagreement")] == [0.0, 0.0]  # one model agrees with itself
    with pytest.raises(ValueError, match="unknown class"):
        review.rank(resumed, "class", FCN8S, "Giraffe")


@pytest.mark.slow
def test_torchrun_shards_into_one_database(camvid_root, tmp_path, capsys):
    import os
    import subprocess
    import sys

    db = tmp_path / "sharded.sqlite"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "segviz", "review",
           "--data", str(camvid_root), "--limit", "4", "--models", FCN8S, "--db", str(db), "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads(done.stdout)  # rank 0 alone prints
    assert data["images"] == 4 and data["computed_rows"] == 4
    code, out, _ = _cli(capsys, ["eval", "--model", FCN8S, "--data", str(camvid_root), "--limit", "4", "--json"])
    want = json.loads(out)
    assert data["models"][0]["miou"] == want["miou"] and data["models"][0]["per_class_iou"] == want["per_class_iou"]
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT count(*) FROM results").fetchone()[0] == 4
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# --------------------------------------------------------------------------- the Review tab's handlers
@pytest.fixture
def tab_db(reviewed, monkeypatch):
    """The tab's default database is the fixture's (``$SEGVIZ_CACHE/review.sqlite``)."""
    db = reviewed[0]
    monkeypatch.setenv("SEGVIZ_CACHE", str(db.parent))
    return db


def test_tab_reads_the_review_back_and_opens_a_frame_in_compare(tab_db, camvid_root):
    from segviz.ui.review import frame_files, frames, overview, query

    q = query("camvid", "val", None, [FCN8S], False, 2)
    shown = overview(q)
    assert "**2 images**" in shown["summary"] and "0 predictions computed" in shown["summary"]
    header, rows = shown["leaderboard"]
    assert header[:2] == ["model", "mIoU"] and rows[0][0] == FCN8S and rows[0][1] > 50
    assert shown["classes"][0][1:] == list(review.camvid_source(camvid_root).labels.classes)
    pictures, indices = frames(q, "miou", FCN8S, None)
    assert len(pictures) == 2 and sorted(indices) == [0, 1] and pictures[0][0].shape == (360, 480, 3)
    assert "mIoU" in pictures[0][1]
    image, label = frame_files(q, indices[0])
    name = pictures[0][1].split(" · ")[0]
    assert np.array_equal(np.asarray(Image.open(label)), np.asarray(Image.open(camvid_root / "valannot" / name)))
    assert np.array_equal(np.asarray(Image.open(image)), np.asarray(Image.open(camvid_root / "val" / name)))


def test_tab_reviews_an_uploaded_zip(tab_db, camvid_root, tmp_path):
    import zipfile

    from segviz.ui.review import overview, query

    first = review.camvid_source(camvid_root, "val", 1).items[0]
    upload = tmp_path / "set.zip"
    with zipfile.ZipFile(upload, "w") as z:
        z.write(first.image, "my set/images/a.png")
        z.write(first.label, "my set/labels/a.png")
        z.writestr("my set/images/b.png", b"broken")
    shown = overview(query("camvid", "", str(upload), [FCN8S], False, 0))
    assert "**1 images**" in shown["summary"] and "skipped b.png: no label" in shown["summary"]
    (tmp_path / "no-labels.zip").write_bytes(upload.read_bytes().replace(b"labels/", b"labelz/"))
    for bad, words in ((tmp_path / "no-labels.zip", "a folder images/ and a folder labels/"),
                       (tmp_path / "a.txt", "not a zip file")):
        bad.touch()
        with pytest.raises(ValueError, match=words):
            query("camvid", "val", str(bad), [FCN8S], False, 0)
    with pytest.raises(ValueError, match="select at least one model"):
        query("camvid", "val", None, [], False, 0)


def test_unpacked_uploads_unused_for_the_keep_time_are_removed(tab_db, camvid_root, tmp_path, monkeypatch):
    import os
    import zipfile

    from segviz import ui
    from segviz.ui import review as tab

    monkeypatch.setattr(tab, "UNPACKED", tmp_path / "unpacked")
    first = review.camvid_source(camvid_root, "val", 1).items[0]
    queries = []
    for name in ("old", "new"):
        upload = tmp_path / f"{name}.zip"
        with zipfile.ZipFile(upload, "w") as z:
            z.write(first.image, "images/a.png")
            z.write(first.label, "labels/a.png")
            z.writestr(f"images/{name}.txt", name)  # a different zip, so its own folder
        ui._last_prune.clear()
        queries.append(tab.query("camvid", "", str(upload), [FCN8S], False, 0))
        if name == "old":
            stale = time.time() - ui.KEEP_OUTPUTS_S - 10
            os.utime(tmp_path / "unpacked" / Path(queries[0].folder[0]).parent.name, (stale, stale))
    old, new = (Path(q.folder[0]).parent for q in queries)
    assert not old.exists() and new.is_dir()  # the second upload removed the stale first one
    assert "**1 images**" in tab.overview(queries[1])["summary"]
    with pytest.raises(ValueError, match=f"removed after {ui.KEEP_OUTPUTS_S // 60} minutes unused; upload it again"):
        tab.overview(queries[0])


@pytest.mark.slow
@pytest.mark.browser
def test_browser_review_tab_then_a_frame_in_compare(tmp_path):
    import os
    import time
    from pathlib import Path

    from conftest import start_app
    from segviz import records
    from segviz.ui.compare import ready_names

    if not Path("/usr/bin/chromium").exists():
        if os.environ.get("CI"):
            pytest.fail("chromium must be installed in CI (apt-get install chromium)")
        pytest.skip("chromium is not installed")
    from playwright.sync_api import sync_playwright

    keep = [FCN8S, "deeplabv3_mobilenet_edgetpu.camvid"]
    url, proc = start_app(SEGVIZ_CACHE=str(tmp_path / "cache"))
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                        args=["--no-sandbox", "--disable-background-networking",
                                              "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.get_by_role("tab", name="Review").click()
            page.wait_for_selector("#review-run")
            for name in ready_names("camvid"):
                if name not in keep:
                    page.locator("#review-models").get_by_label(records.get(name).title, exact=True).uncheck()
            page.fill("#review-limit input", "4")
            page.click("#review-run")
            page.wait_for_function("document.querySelectorAll('#review-gallery .thumbnail-item img').length == 4",
                                   timeout=300_000)
            board = page.inner_text("#review-leaderboard")
            assert all(name in board for name in keep) and "pixel acc" in board
            assert "4 images" in page.inner_text("#review-summary")
            captions = page.eval_on_selector_all("#review-gallery .thumbnail-item img", "els => els.map(e => e.alt)")
            scores = [float(c.split(" · ")[1].split()[0]) for c in captions]
            assert scores == sorted(scores)  # worst frame first
            page.eval_on_selector_all("img", "els => els.forEach(e => { e.loading = 'eager'; })")
            page.wait_for_function("[...document.querySelectorAll('#review-gallery img')]"
                                   ".every(e => e.complete && e.naturalWidth > 0)", timeout=60_000)
            shot = Path(os.environ.get("SEGVIZ_REVIEW_SCREENSHOT", tmp_path / "review.png"))
            page.screenshot(path=str(shot), full_page=True)
            # ranked by disagreement between the two models instead: most disputed first
            page.click("#review-rank input")
            page.get_by_role("option", name="disagreement between the models").click()
            page.wait_for_function("[...document.querySelectorAll('#review-gallery .thumbnail-item img')]"
                                   ".every(e => e.alt.includes('disagreeing'))", timeout=60_000)
            captions = page.eval_on_selector_all("#review-gallery .thumbnail-item img", "els => els.map(e => e.alt)")
            shares = [float(c.split(" · ")[1].split()[0]) for c in captions]
            assert len(shares) == 4 and shares == sorted(shares, reverse=True) and shares[0] > 0
            # a frame clicked opens in Compare with its ground truth
            page.locator("#review-gallery .thumbnail-item").first.click()
            page.wait_for_selector("#input-image img", timeout=60_000)
            assert page.get_by_role("tab", name="Compare", selected=True).count() == 1
            page.wait_for_function("document.querySelector('#ground-truth').innerText.includes('.png')", timeout=60_000)
            # Cancel stops a long run after the frame in hand; what finished stays in the database
            page.get_by_role("tab", name="Review").click()
            page.fill("#review-limit input", "0")
            page.click("#review-run")
            db = tmp_path / "cache" / "review.sqlite"

            def rows():
                with sqlite3.connect(db) as con:
                    return con.execute("SELECT count(*) FROM results").fetchone()[0]

            deadline = time.time() + 120
            while rows() < 2 * 4 + 2 and time.time() < deadline:  # a new frame stored: the run is under way
                time.sleep(0.5)
            page.click("#review-cancel")
            time.sleep(15)  # the frame in hand finishes
            stopped = rows()
            time.sleep(10)
            assert rows() == stopped < 2 * 101
            browser.close()
    finally:
        proc.terminate()
        proc.wait(20)


@pytest.mark.slow
def test_two_review_processes_on_one_database(camvid_root, tmp_path):
    import subprocess
    import sys

    db = tmp_path / "both.sqlite"
    cmd = [sys.executable, "-m", "segviz", "review", "--data", str(camvid_root), "--limit", "3", "--models", FCN8S,
           "--db", str(db), "--json"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-1000:] for _, err in outs]
    first, second = (json.loads(out) for out, _ in outs)
    assert first["models"] == second["models"] and first["images"] == second["images"] == 3
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT count(*) FROM results").fetchone()[0] == 3
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_scores_with_and_without_the_crf(reviewed, camvid_root):
    db, _, _, resumed = reviewed
    if resumed.crf is None:
        pytest.skip("pydensecrf is not installed")
    data = review.to_json(resumed)["models"][0]
    plain, refined = resumed.prediction(FCN8S, False, 0), resumed.prediction(FCN8S, True, 0)
    assert 0 < (plain != refined).mean() < 0.2  # the CRF moves some pixels, mostly along edges
    assert data["crf"]["miou"] != data["miou"] and len(data["crf"]["trimap"]["miou"]) == 10
    assert 0 < data["crf"]["boundary_f"] < 100
    # the rows without the CRF are the same ones a run without it reads
    store = review.Store(db)
    try:
        without = review.run(review.camvid_source(camvid_root, "val", 2), [FCN8S], store)
        assert without.computed == 0 and review.to_json(without)["models"][0]["miou"] == data["miou"]
    finally:
        store.close()


@pytest.mark.slow
def test_voc_devkit_layout_with_the_coral_model(tmp_path, capsys):
    from conftest import CORAL

    if not (CORAL / "deeplabv3_mnv2_dm05_pascal_quant.tflite").exists():
        pytest.skip("the Coral model is not in ../shared")
    root = tmp_path / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    # Coral's published test image and its mask (VOC ids)
    Image.open(CORAL / "bird_segmentation.bmp").convert("RGB").save(root / "JPEGImages" / "bird.jpg", quality=95)
    Image.open(CORAL / "bird_segmentation_mask.bmp").save(root / "SegmentationClass" / "bird.png")
    (root / "ImageSets/Segmentation/val.txt").write_text("bird\nmissing\n")
    code, out, _ = _cli(capsys, ["review", "--set", "voc", "--data", str(root), "--models", "deeplabv3_mnv2_dm05.voc",
                                 "--db", str(tmp_path / "voc.sqlite"), "--json"])
    data = json.loads(out)
    assert code == 0 and data["set"] == "voc" and data["images"] == 1
    assert [s["file"] for s in data["skipped"]] == ["missing"]
    model = data["models"][0]
    assert model["pixel_acc"] > 90 and model["per_class_iou"]["bird"] > 50


def test_a_backend_is_checked_before_anything_runs():
    with pytest.raises(ValueError, match="unknown backend"):
        review.choose_models([FCN8S], "camvid", "tensorrt")
    assert review.settings_key(None, "openvino") != review.settings_key(None)  # its rows are its own
    # so are a model's run at another input scale (the same weights file, enlarged frames)
    assert review.settings_key(None, None, 2.0) != review.settings_key(None) == review.settings_key(None, None, 1.0)


def test_a_second_pass_reads_the_database_without_importing_torch(reviewed):
    """What makes the command answer in about a second: listing records, hashing files and reading rows need
    neither torch nor the model modules (importing torch alone takes seconds on a small machine)."""
    import subprocess
    import sys

    db, args, _, resumed = reviewed
    code = ("import json, sys; from segviz.cli import main; main(sys.argv[1:]); "
            "bad = sorted(m for m in ('torch', 'torchvision', 'matplotlib', 'cv2', 'segviz.models') if m in sys.modules); "
            "print(json.dumps(bad))")
    out = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    data, imported = out.stdout.rsplit("\n", 2)[0], json.loads(out.stdout.strip().rsplit("\n", 1)[1])
    assert imported == [], imported
    assert json.loads(data)["models"][0]["miou"] == review.to_json(resumed)["models"][0]["miou"]


def test_auto_runs_each_model_on_the_backend_the_app_chooses_and_keys_its_rows_by_it(reviewed, camvid_root,
                                                                                      monkeypatch, capsys):
    from segviz import inference

    db, args, _, resumed = reviewed
    monkeypatch.setenv("SEGVIZ_BACKEND", "torch-channels-last")  # what the app would run it on here
    inference._load_runner.cache_clear()
    try:
        code, out, _ = _cli(capsys, args + ["--backend", "auto"])
        again = json.loads(_cli(capsys, args + ["--backend", "auto"])[1])
    finally:
        inference._load_runner.cache_clear()
    data = json.loads(out)
    assert code == 0 and data["models"][0]["runner"] == "torch-channels-last"
    assert data["computed_rows"] == 2 and again["computed_rows"] == 0  # rows of its own, then from the database
    assert json.loads(_cli(capsys, args)[1])["models"][0]["runner"] == "torch module (as eval)"
    assert abs(data["models"][0]["miou"] - review.to_json(resumed)["models"][0]["miou"]) < 0.5


@pytest.mark.slow
def test_review_on_openvino_agrees_with_eval(reviewed, camvid_root):
    from segviz.backends import missing

    if missing("openvino"):
        pytest.skip(missing("openvino"))
    db, _, _, resumed = reviewed
    store = review.Store(db)
    try:
        fast = review.run(review.camvid_source(camvid_root, "val", 2), [FCN8S], store, backend="openvino")
        assert fast.computed == 2  # rows of their own, beside the torch module's
        for i in range(2):
            agree = (fast.prediction(FCN8S, False, i) == resumed.prediction(FCN8S, False, i)).mean()
            assert agree >= 0.999, agree
    finally:
        store.close()


def test_a_file_bad_for_one_label_set_is_not_remembered_as_bad_for_another(tmp_path):
    from segviz.records import datasets

    camvid, voc = datasets()["camvid"].labels, datasets()["voc"].labels
    store = review.Store(tmp_path / "review.sqlite")
    store.put([], [("img", "lab", review.bad_key(camvid), "label ids 12-20 are not CamVid classes")])
    assert store.bad(review.bad_key(camvid)) == {("img", "lab"): "label ids 12-20 are not CamVid classes"}
    assert store.bad(review.bad_key(voc)) == {}


def test_a_damaged_zip_is_a_one_line_error_and_leaves_nothing_unpacked(tmp_path, monkeypatch):
    import zipfile

    from segviz.ui import review as tab

    monkeypatch.setattr(tab, "UNPACKED", tmp_path / "unpacked")
    upload = tmp_path / "damaged.zip"
    with zipfile.ZipFile(upload, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("images/a.txt", "fine")
        z.writestr("labels/a.png", b"\x00" * 4000)
    data = bytearray(upload.read_bytes())
    start = data.index(b"labels/a.png") + len("labels/a.png")  # the member's compressed bytes follow its name
    data[start + 2:start + 6] = b"\xff\xff\xff\xff"
    upload.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="the zip is damaged or encrypted: labels/a.png cannot be read"):
        tab.query("camvid", "", str(upload), [FCN8S], False, 0)
    assert not list((tmp_path / "unpacked").iterdir())
