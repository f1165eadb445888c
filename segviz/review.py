"""Error review over a labelled set: every model on every image once, kept in an SQLite database.

A row per (model, weights sha256, image sha256, label sha256, settings) holds the predicted label
map (PNG), the image's confusion matrix, its trimap confusion matrices (pixels near ground-truth
boundaries, :data:`segviz.metrics.BANDS`) and its boundary counts. "Settings" are how an image
becomes the model's input (:data:`PREPROCESSING`) and the dense CRF's parameters (or none), as JSON.
A run computes only the rows that are missing, one image per transaction, so an interrupted run
resumes where it stopped and the database never holds half an image. SQLite in WAL mode lets other
processes read and write meanwhile (a row two processes both computed is kept once).

The scores are those of ``segviz eval``: the same torch module (:func:`segviz.inference.load_model`),
the same logits, the same confusion matrices summed over the images.
"""
from __future__ import annotations

import io
import json
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from . import records
from .metrics import (BANDS, BF_TOLERANCE, Truth, boundary_counts, boundary_fscore, confusion_matrix, scores,
                      trimap_confusion, trimap_scores)
from .preprocess import MAX_SIDE, InputError, prepare_image, prepare_mask
from .weights import sha256_file

# How an image becomes a model's input; part of every row's key (change it and rows are recomputed).
PREPROCESSING = {"decode": "rgb, exif upright", "max_side": MAX_SIDE, "runner": "torch module (as eval)",
                 "bands": list(BANDS), "bf_tolerance": BF_TOLERANCE}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def default_db() -> Path:
    from .backends import cache_dir

    return cache_dir() / "review.sqlite"


# --------------------------------------------------------------------------- what to review
@dataclass(frozen=True)
class Item:
    name: str  # shown in tables and reports: the image's file name
    image: Path
    label: Path


@dataclass
class Source:
    dataset: str  # the label set's dataset name ("camvid", "voc")
    title: str  # e.g. "camvid val", "folder photos"
    items: list[Item]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file name, why), found while listing
    root: Path | None = None  # the CamVid folder whose split lists say which frames a model trained on

    @property
    def labels(self):
        return records.datasets()[self.dataset].labels


def camvid_source(data=None, split: str = "val", limit: int | None = None) -> Source:
    """A CamVid split (see :mod:`segviz.data.camvid`)."""
    from .data.camvid import default_root, resolve_split

    root = default_root(data)
    pairs = resolve_split(root, split)[:limit]
    return Source("camvid", f"camvid {split}", [Item(i.name, i, t) for i, t in pairs], root=root)


def voc_source(data, split: str = "val", limit: int | None = None) -> Source:
    """A PASCAL VOC 2012 split in the devkit's layout: ``ImageSets/Segmentation/<split>.txt`` lists the ids,
    ``JPEGImages/<id>.jpg`` and ``SegmentationClass/<id>.png`` (255: ignore) are the pairs; listed ids
    with a file missing are skipped."""
    root = Path(data)
    listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not listing.exists():
        raise FileNotFoundError(f"{listing} is missing: {root} is not a VOC 2012 folder with a split {split!r}")
    items, skipped = [], []
    for name in listing.read_text().split()[:limit]:
        image, label = root / "JPEGImages" / f"{name}.jpg", root / "SegmentationClass" / f"{name}.png"
        if image.exists() and label.exists():
            items.append(Item(image.name, image, label))
        else:
            skipped.append((f"{name}", f"{'JPEGImages' if not image.exists() else 'SegmentationClass'} has no file "
                                       f"for it"))
    return Source("voc", f"voc {split}", items, skipped)


def folder_source(images, labels, dataset: str = "camvid", limit: int | None = None) -> Source:
    """A folder of images and a folder of label PNGs (one class id per pixel) paired by file stem;
    files without a partner are listed as skipped."""
    if dataset not in records.datasets():
        raise ValueError(f"unknown set {dataset!r}; choose one of: {', '.join(records.datasets())}")
    folders = {}
    for what, folder in (("images", images), ("labels", labels)):
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"the {what} folder {folder} does not exist")
        folders[what] = {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    imgs, labs = folders["images"], folders["labels"]
    items = [Item(imgs[s].name, imgs[s], labs[s]) for s in sorted(imgs) if s in labs][:limit]
    skipped = [(imgs[s].name, "no label PNG with the same stem") for s in sorted(imgs) if s not in labs]
    skipped += [(labs[s].name, "a label without an image of the same stem") for s in sorted(labs) if s not in imgs]
    if not items:
        raise ValueError(f"no image in {images} has a label of the same stem in {labels}")
    root = None
    if dataset == "camvid":  # CamVid's file names name their frames: compare them with the training frames'
        from .data.camvid import default_root

        try:
            root = default_root()
        except FileNotFoundError:
            pass
    return Source(dataset, f"folder {Path(images).name}", items, skipped, root)


def training_frames(record, root: Path | None) -> frozenset[str] | None:
    """The file names of the frames ``record`` was trained on: for a model trained here on CamVid, its
    recipe's train split as the CamVid folder ``root`` lists it; None where that is not known."""
    split = record.metrics.get("train_split") if record.trained_here else None
    if split is None or root is None or record.dataset.name != "camvid":
        return None
    from .data.camvid import resolve_split

    try:
        return frozenset(image.name for image, _ in resolve_split(root, split))
    except (FileNotFoundError, ValueError):
        return None



# --------------------------------------------------------------------------- the database
SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    model TEXT NOT NULL, weights_sha256 TEXT NOT NULL, image_sha256 TEXT NOT NULL, label_sha256 TEXT NOT NULL,
    settings TEXT NOT NULL,
    prediction BLOB NOT NULL,  -- the label map, PNG
    cm BLOB NOT NULL,          -- (C, C) int64, .npy
    trimap BLOB NOT NULL,      -- (bands, C, C) int64, .npy
    boundary BLOB NOT NULL,    -- 4 int64 (metrics.boundary_counts), .npy
    PRIMARY KEY (model, weights_sha256, image_sha256, label_sha256, settings));
CREATE TABLE IF NOT EXISTS bad (
    image_sha256 TEXT NOT NULL, label_sha256 TEXT NOT NULL, settings TEXT NOT NULL, reason TEXT NOT NULL,
    PRIMARY KEY (image_sha256, label_sha256, settings));
"""


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(a, np.int64), allow_pickle=False)
    return buf.getvalue()


def _from_npy(b: bytes) -> np.ndarray:
    return np.load(io.BytesIO(b), allow_pickle=False)



BUSY_TIMEOUT = 60  # seconds a process waits for another one's write


class Store:
    """The review database (created on first use, WAL journal, waits up to a minute for a writer)."""

    def __init__(self, path=None):
        self.path = Path(path) if path else default_db()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, check_same_thread=False)
            # switching a new file to WAL while another process does the same can fail at once with "database
            # is locked" (SQLite does not wait on its busy timeout there): try again for as long
            deadline = time.monotonic() + BUSY_TIMEOUT
            while True:
                try:
                    self.db.execute("PRAGMA journal_mode=WAL")
                    break
                except sqlite3.OperationalError as e:
                    if "locked" not in str(e) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            self.db.execute("PRAGMA synchronous=NORMAL")  # in WAL mode: a crash loses at most the last commits
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise ValueError(f"{self.path} is not a segviz review database ({e})") from None

    def close(self):
        self.db.close()

    def done(self, model: str, weights: str, settings: str) -> set[tuple[str, str]]:
        """(image sha256, label sha256) of the rows present for one model and settings."""
        rows = self.db.execute("SELECT image_sha256, label_sha256 FROM results WHERE model=? AND weights_sha256=? "
                               "AND settings=?", (model, weights, settings))
        return set(rows)

    def bad(self, settings: str) -> dict[tuple[str, str], str]:
        rows = self.db.execute("SELECT image_sha256, label_sha256, reason FROM bad WHERE settings=?", (settings,))
        return {(i, t): why for i, t, why in rows}

    def put(self, rows: list[tuple], bad: list[tuple] = ()):
        """One transaction: all of ``rows`` (and ``bad`` entries) or none."""
        with self.db:
            self.db.executemany("INSERT OR IGNORE INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            self.db.executemany("INSERT OR IGNORE INTO bad VALUES (?, ?, ?, ?)", bad)

    def scores(self, model: str, weights: str, settings: str) -> dict[tuple[str, str], tuple]:
        """(image, label sha256) -> (cm, trimap, boundary counts) for one model and settings."""
        rows = self.db.execute("SELECT image_sha256, label_sha256, cm, trimap, boundary FROM results WHERE model=? "
                               "AND weights_sha256=? AND settings=?", (model, weights, settings))
        return {(i, t): (_from_npy(cm), _from_npy(tri), _from_npy(b)) for i, t, cm, tri, b in rows}

    def prediction(self, model: str, weights: str, settings: str, image: str, label: str) -> np.ndarray | None:
        row = self.db.execute("SELECT prediction FROM results WHERE model=? AND weights_sha256=? AND settings=? AND "
                              "image_sha256=? AND label_sha256=?", (model, weights, settings, image, label)).fetchone()
        return None if row is None else np.asarray(Image.open(io.BytesIO(row[0])))


def settings_key(crf=None, backend: str | None = None, input_scale: float = 1.0) -> str:
    """A row's settings: :data:`PREPROCESSING` (with the backend, when one is named instead of eval's
    torch module, and the model's input scale, :attr:`segviz.records.Record.input_scale`, when it is not 1)
    and the CRF's parameters."""
    preprocessing = PREPROCESSING if backend is None else {**PREPROCESSING, "runner": backend}
    if input_scale != 1:
        preprocessing = {**preprocessing, "input_scale": input_scale}
    return json.dumps({"preprocessing": preprocessing, "crf": crf.as_dict() if crf is not None else None},
                      sort_keys=True)


def bad_key(labelset) -> str:
    """What a file found bad is remembered under: the preprocessing and the label set it was read
    with (a label map bad for CamVid may be fine for VOC)."""
    return json.dumps({"preprocessing": PREPROCESSING, "labels": labelset.name}, sort_keys=True)


# --------------------------------------------------------------------------- running
class Cancelled(Exception):
    """The run was cancelled; every image finished before that is in the database."""


def _hash_items(source: Source, skipped: list) -> list[tuple[Item, str, str]]:
    out = []
    for item in source.items:
        try:
            out.append((item, sha256_file(item.image), sha256_file(item.label)))
        except OSError as e:
            skipped.append((item.name, f"unreadable ({e.strerror or e})"))
    return out


def load_pair(item: Item, labelset) -> tuple[np.ndarray, np.ndarray]:
    """An item's image (as the models see it) and its label map, or a one-line :class:`InputError`."""
    prepared = prepare_image(item.image)
    try:
        gt = prepare_mask(item.label, prepared.image.shape[:2], labelset.num_classes, labelset.ignore_index,
                          prepared.original_size)
    except InputError as e:
        raise InputError(f"label {item.label.name}: {e}") from None
    return prepared.image, gt


def _forward(record, inputs, backend: str | None = None):
    """Logits of one model on one image (``inputs``: its :class:`segviz.evaluate.ModelInput`, shared by the
    models), on eval's torch module or on ``backend``."""
    from .evaluate import logits_of
    from .inference import load_model, load_runner

    model = load_model(record.name) if backend is None else load_runner(record.name, backend)
    device = model.device if backend else next(model.parameters()).device
    return logits_of(model, inputs.for_model(model, device), device, record.scale_for(*inputs.image.shape[:2]))


def _score(record, logits, image: np.ndarray, truth: Truth, keys: list[str], crfs: dict, hashes) -> list[tuple]:
    """The rows of one model's ``logits`` on one image (``truth``: its ground truth, shared by the models),
    one for each settings key it lacks."""
    import torch

    from .compare import png_bytes
    from .crf import dense_crf
    from .evaluate import labels_of

    out = []
    for key in keys:
        if crfs[key] is None:
            pred = labels_of(logits)
        else:
            probs = torch.softmax(logits, 1)[0].cpu().numpy()
            pred = dense_crf(probs, image, crfs[key]).argmax(0)
        pred = pred.astype(np.uint8)
        out.append((record.name, record.sha256, *hashes, key, png_bytes(pred),
                    _npy(confusion_matrix(pred, truth.target, record.labels.num_classes)),
                    _npy(trimap_confusion(pred, truth)), _npy(boundary_counts(pred, truth))))
    return out


def choose_models(names, dataset: str, backend: str | None = None) -> list:
    """``all`` (every model of ``dataset`` whose weights are here) or a list of names, checked (with
    ``backend``: it is installed, and the models are ones trained here, which every backend can run)."""
    if names in (None, "all", ["all"]):
        chosen = [r for r in records.records(dataset) if r.missing() is None]
        if not chosen:
            raise ValueError(f"no model of the {dataset} set has its weights on this machine")
    else:
        chosen = records.resolve(list(names))
        if chosen[0].dataset.name != dataset:
            raise ValueError(f"{chosen[0].name} predicts {chosen[0].dataset.name} labels but the images are "
                             f"labelled for {dataset}; pass --set {chosen[0].dataset.name} or other models")
    if backend not in (None, "auto"):
        from .backends import missing

        why = missing(backend) or next((f"{r.name} runs on torch only (a backend applies to the models trained "
                                        f"here)" for r in chosen if not r.trained_here), None)
        if why:
            raise ValueError(why)
    return chosen


def resolve_backends(models: list, backend: str | None) -> dict[str, str | None]:
    """What runs each model: None (eval's torch module), the backend named, or for ``auto`` the backend the
    app runs it on (:func:`segviz.backends.runner`: measured fastest on this machine at first use, then
    remembered; foreign networks stay on the torch module). Rows are keyed by it."""
    if backend != "auto":
        return {r.name: backend for r in models}
    from .backends import missing, remembered, requested
    from .inference import load_runner, probe_size

    def chosen(r):
        known = requested() or remembered(r.sha256, probe_size(r))  # what load_runner would pick, not loading it
        return known if known and not missing(known) else load_runner(r.name).backend

    return {r.name: chosen(r) if r.trained_here else None for r in models}


def _keys(crf, backend: str | None, input_scale: float) -> list[str]:
    return [settings_key(None, backend, input_scale)] + ([settings_key(crf, backend, input_scale)] if crf is not None
                                                          else [])


@dataclass
class Review:
    """What a run found: per model and settings, per image, the stored scores."""

    source: Source
    models: list  # records
    crf: object  # CRFParams or None
    items: list[tuple[Item, str, str]]  # the reviewed images with their sha256s (bad ones left out)
    skipped: list[tuple[str, str]]
    per_image: dict = field(default_factory=dict)  # (model, with_crf) -> [(cm, trimap, boundary) per item]
    computed: int = 0  # rows computed by this run (the rest came from the database)
    store: Store | None = None
    backends: dict = field(default_factory=dict)  # model -> what ran it (resolve_backends; None: eval's module)
    trained_on: dict = field(default_factory=dict)  # model -> how many reviewed images it trained on (None: unknown)

    def record(self, model: str):
        return next(r for r in self.models if r.name == model)

    def settings(self, with_crf: bool, model: str) -> str:
        return settings_key(self.crf if with_crf else None, self.backends.get(model), self.record(model).input_scale)

    def variants(self) -> list[bool]:
        return [False, True] if self.crf is not None else [False]

    def prediction(self, model: str, with_crf: bool, index: int) -> np.ndarray:
        record = self.record(model)
        item, image, label = self.items[index]
        return self.store.prediction(model, record.sha256, self.settings(with_crf, model), image, label)


def plan(source: Source, models: list, store: Store, crf=None, skipped=None, backends=None) -> tuple[list, list, list]:
    """Hash the images and drop those known to be bad: (items with their sha256s, skipped, pending), where
    pending lists (index into items, [(model, settings) rows the database lacks]) per image; ``backends``
    maps model names to what runs them (:func:`resolve_backends`; default: eval's torch module)."""
    skipped = list(source.skipped) if skipped is None else skipped
    hashed = _hash_items(source, skipped)
    backends = backends or {}
    known_bad = store.bad(bad_key(source.labels))
    items = []
    for entry in hashed:
        why = known_bad.get(entry[1:])
        if why:
            skipped.append((entry[0].name, why))
        else:
            items.append(entry)
    done = {(r.name, k): store.done(r.name, r.sha256, k) for r in models
            for k in _keys(crf, backends.get(r.name), r.input_scale)}
    work = []
    for i, (_, image, label) in enumerate(items):
        lacking = [(m, k) for (m, k), rows in done.items() if (image, label) not in rows]
        if lacking:
            work.append((i, lacking))
    return items, skipped, work


# Images per step: each model runs over a chunk's images in a row, which on a CPU is about 20% faster than
# running every model on one image before the next (the models' weights and buffers stay warm).
CHUNK = 8


def compute(items, pending: list, models: list, put, crf, labelset, skipped: list,
            progress=None, cancelled=None, backends=None) -> int:
    """Compute the pending rows, :data:`CHUNK` images at a time (decoded once, each model over all of them in
    a row, each prediction scored on a second thread while the next forward runs), and hand each image's
    rows to ``put(rows, bad)`` (:meth:`Store.put`: one transaction per image).
    ``progress(done, total, text)`` is told the images finished after each model's pass over a chunk;
    ``cancelled()`` is asked before each forward and, if true, what is finished is stored and
    :class:`Cancelled` is raised."""
    if not pending:
        return 0
    by_name = {r.name: r for r in models}
    backends = backends or {}
    crfs = {k: (crf if i else None) for r in models for i, k in enumerate(_keys(crf, backends.get(r.name), r.input_scale))}
    with ThreadPoolExecutor(1, thread_name_prefix="review-score") as pool:  # scores one model while the next runs
        return _compute_chunks(items, pending, by_name, put, crfs, labelset, skipped, progress, cancelled, backends,
                               pool)


def _compute_chunks(items, pending, by_name, put, crfs, labelset, skipped, progress, cancelled, backends, pool) -> int:
    from .evaluate import ModelInput  # imports torch: only when there is something to compute

    plain = bad_key(labelset)
    computed = finished = 0
    for start in range(0, len(pending), CHUNK):
        batch = pending[start:start + CHUNK]
        chunk = []  # (hashes, lacking, inputs, truth, rows) of each readable image
        for i, lacking in batch:
            item, image_sha, label_sha = items[i]
            try:
                image, gt = load_pair(item, labelset)
            except InputError as e:
                skipped.append((item.name, str(e)))
                put([], [(image_sha, label_sha, plain, str(e))])
                finished += 1
                continue
            chunk.append(((image_sha, label_sha), lacking, ModelInput(image),
                          Truth(gt, labelset.num_classes, labelset.ignore_index), []))
        scoring = []  # (rows of an image, future of one model's rows for it)

        def drain(keep: int = 0):
            while len(scoring) > keep:
                rows_of, future = scoring.pop(0)
                rows_of += future.result()

        try:
            for name in dict.fromkeys(m for _, lacking, *_ in chunk for m, _ in lacking):
                for hashes, lacking, inputs, truth, rows in chunk:
                    keys = [k for m, k in lacking if m == name]
                    if not keys:
                        continue
                    if cancelled is not None and cancelled():
                        drain()
                        done = finished + sum(len(rows) == len(lacking) for _, lacking, _, _, rows in chunk)
                        raise Cancelled(f"cancelled after {done} of {len(pending)} images; run again to resume")
                    record = by_name[name]
                    logits = _forward(record, inputs, backends.get(name))
                    drain(keep=1)  # at most two models' logits wait (7.6 MB each at 360x480)
                    scoring.append((rows, pool.submit(_score, record, logits, inputs.image, truth, keys, crfs, hashes)))
                if progress is not None:
                    progress(finished, len(pending), by_name[name].short)
            drain()
        finally:  # what was computed is kept, also when cancelled
            for *_, rows in chunk:
                if rows:
                    put(rows, [])
                    computed += len(rows)
        finished += len(chunk)
        if progress is not None:
            progress(finished, len(pending), items[batch[-1][0]][0].name)
    return computed


def collect(review: Review) -> Review:
    """Read every reviewed image's scores back from the database; an image without all its rows (found bad,
    here or by another process) is left out."""
    got = {(r.name, v): review.store.scores(r.name, r.sha256, review.settings(v, r.name))
           for r in review.models for v in review.variants()}
    review.items = [e for e in review.items if all(e[1:] in rows for rows in got.values())]
    review.per_image = {key: [rows[e[1:]] for e in review.items] for key, rows in got.items()}
    for r in review.models:
        frames = training_frames(r, review.source.root)
        review.trained_on[r.name] = None if frames is None else sum(e[0].name in frames for e in review.items)
    return review


def run(source: Source, names="all", store: Store | None = None, crf=None, progress=None, cancelled=None,
        backend: str | None = None) -> Review:
    """Review ``source`` with the models ``names`` (``all`` or record names), with and (given ``crf``)
    without the dense CRF, on eval's torch module, on ``backend`` (:mod:`segviz.backends`) or, for ``auto``,
    on the backend the app would choose per model; compute what ``store`` lacks, then read everything back."""
    store = store or Store()
    models = choose_models(names, source.dataset, backend)
    backends = resolve_backends(models, backend)
    items, skipped, pending = plan(source, models, store, crf, backends=backends)
    computed = compute(items, pending, models, store.put, crf, source.labels, skipped, progress, cancelled, backends)
    return collect(Review(source, models, crf, items, skipped, computed=computed, store=store, backends=backends))


def run_sharded(source: Source, names="all", db=None, crf=None, progress=None, backend=None) -> Review | None:
    """:func:`run` across the processes of ``torchrun``: rank 0 plans what the database ``db`` lacks and
    stores its own share as it goes; every other rank computes every world-size-th pending image and sends
    its rows to rank 0 (gloo, so machines need no shared disk), which stores them. With ``auto``, every rank
    runs each model on the backend rank 0 chose. Returns the review on rank 0, None elsewhere."""
    import torch.distributed as dist

    dist.init_process_group("gloo")
    store = None
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        models = choose_models(names, source.dataset, backend)
        if rank == 0:
            store = Store(db)
            backends = resolve_backends(models, backend)
            shared = [*plan(source, models, store, crf, backends=backends), backends]
        else:
            shared = [None] * 4
        dist.broadcast_object_list(shared, src=0)
        items, skipped, pending, backends = shared
        mine, own_skipped = ([], []), []

        def keep(rows, bad):
            mine[0].extend(rows), mine[1].extend(bad)

        computed = compute(items, pending[rank::world], models, store.put if rank == 0 else keep, crf,
                           source.labels, own_skipped, progress, backends=backends)
        gathered = [None] * world if rank == 0 else None
        dist.gather_object((mine, own_skipped), gathered, dst=0)
        if rank != 0:
            return None
        for (rows, bad), their_skipped in gathered[1:]:
            store.put(rows, bad)
            computed += len(rows)
            skipped += their_skipped
        return collect(Review(source, models, crf, items, skipped + own_skipped, computed=computed, store=store,
                              backends=backends))
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------- what it says
def summary(review: Review, model, with_crf: bool) -> dict:
    """Scores of one model over the reviewed images: those of ``segviz eval`` (mIoU, pixel and class
    accuracy, per-class IoU), plus boundary F-score and trimap accuracy / mIoU per band."""
    rows = review.per_image[(model.name, with_crf)]
    labelset = review.source.labels
    n = labelset.num_classes
    cm = sum((r[0] for r in rows), np.zeros((n, n), np.int64))
    out = scores(cm, labelset.classes)
    bf = boundary_fscore(sum((r[2] for r in rows), np.zeros(4, np.int64)))
    out["boundary_f"] = None if np.isnan(bf) else round(bf, 2)
    out["trimap"] = {"band_px": list(BANDS), **trimap_scores(sum((r[1] for r in rows), np.zeros((len(BANDS), n, n),
                                                                                                   np.int64)))}
    out["confusion_matrix"] = cm.tolist()
    return out


def to_json(review: Review) -> dict:
    models = []
    for r in review.models:
        entry = {"name": r.name, "title": r.title, "weights_sha256": r.sha256,
                 "runner": review.backends.get(r.name) or PREPROCESSING["runner"], "input_scale": r.input_scale,
                 "trained_on_images": review.trained_on.get(r.name), **summary(review, r, False)}
        if review.crf is not None:
            entry["crf"] = summary(review, r, True)
        models.append(entry)
    return {"set": review.source.dataset, "source": review.source.title, "images": len(review.items),
            "classes": list(review.source.labels.classes), "crf": review.crf.as_dict() if review.crf else None,
            "computed_rows": review.computed, "skipped": [{"file": f, "reason": why} for f, why in review.skipped],
            "models": models}


def leaderboard(data: dict) -> tuple[list[str], list[list]]:
    """Header and rows (best mIoU first) from :func:`to_json`: mIoU, accuracies, boundary F (and after the CRF),
    and how many of the images the model trained on (blank where unknown)."""
    crf = data["crf"] is not None
    header = ["model", "mIoU", "pixel acc", "class acc", "BF"] + (["mIoU + CRF", "BF + CRF"] if crf else []) + [
        "images trained on"]
    rows = [[m["name"], *(None if v is None or np.isnan(v) else round(v, 2) for v in
                          [m["miou"], m["pixel_acc"], m["class_acc"], m["boundary_f"]] +
                          ([m["crf"]["miou"], m["crf"]["boundary_f"]] if crf else [])),
             m["trained_on_images"]] for m in data["models"]]
    return header, sorted(rows, key=lambda r: -(r[1] or 0))


def trained_on_note(data: dict) -> str | None:
    """One line naming the models that trained on some of the reviewed images (their scores there overstate
    what they do on frames they never saw), or None."""
    seen = [(m["name"], m["trained_on_images"]) for m in data["models"] if m["trained_on_images"]]
    if not seen:
        return None
    return ("models trained on some of these images score higher here than on frames they never saw: "
            + ", ".join(f"{name} ({n} of {data['images']})" for name, n in seen))


def class_table(data: dict) -> tuple[list[str], list[list]]:
    """Header and rows from :func:`to_json`: each model's IoU per class."""
    return ["model", *data["classes"]], [[m["name"], *m["per_class_iou"].values()] for m in data["models"]]


def trimap_curves(data: dict, key: str = "miou") -> tuple[list[int], dict[str, list[float]]]:
    """Band widths and, per model (and "<title> + CRF"), its trimap ``key`` ("miou" or "accuracy") per band."""
    curves = {}
    for m in data["models"]:
        curves[m["title"]] = m["trimap"][key]
        if "crf" in m:
            curves[f"{m['title']} + CRF"] = m["crf"]["trimap"][key]
    return list(BANDS), curves


def image_scores(review: Review) -> list[dict]:
    """One row per (image, model, CRF on/off): the image's own mIoU, accuracy, boundary F and per-class IoU."""
    classes = review.source.labels.classes
    out = []
    for r in review.models:
        for with_crf in review.variants():
            for (item, _, _), (cm, _, b) in zip(review.items, review.per_image[(r.name, with_crf)]):
                s = scores(cm, classes)
                bf = boundary_fscore(b)
                out.append({"image": item.name, "model": r.name, "crf": with_crf, "miou": round(s["miou"], 2),
                            "pixel_acc": round(s["pixel_acc"], 2),
                            "boundary_f": None if np.isnan(bf) else round(bf, 2), **s["per_class_iou"]})
    return out


def write_csv(review: Review, path) -> None:
    import csv

    rows = image_scores(review)
    tmp = Path(f"{path}.part")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["image", "model", "crf", "miou"])
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- ranking frames
RANKINGS = ("miou", "disagreement", "class")


def image_mious(review: Review, model: str, with_crf: bool = False) -> np.ndarray:
    """Each reviewed image's own mIoU (%) for one model."""
    return np.array([scores(cm)["miou"] for cm, _, _ in review.per_image[(model, with_crf)]])


def disagreements(review: Review, with_crf: bool = False) -> np.ndarray:
    """Per image: the mean share of models that disagree with the majority label, over its pixels (0: all agree)."""
    from .viz import disagreement

    n = len(review.models)
    return np.array([disagreement([review.prediction(r.name, with_crf, i) for r in review.models]).mean() / n
                     for i in range(len(review.items))])


def class_errors(review: Review, model: str, class_name: str, with_crf: bool = False) -> np.ndarray:
    """Per image: the pixels one model gets wrong for one class (missed ones and false ones), as % of the image."""
    c = list(review.source.labels.classes).index(class_name)
    return np.array([(cm[c].sum() + cm[:, c].sum() - 2 * cm[c, c]) / max(cm.sum(), 1) * 100
                     for cm, _, _ in review.per_image[(model, with_crf)]])


def rank(review: Review, by: str = "miou", model: str | None = None, class_name: str | None = None,
         with_crf: bool = False) -> list[tuple[int, float]]:
    """(image index, score) worst first: by ``model``'s per-image mIoU (lowest first), by disagreement between
    the models (most first), or by ``model``'s error on ``class_name`` (most first)."""
    model = model or review.models[0].name
    if by == "miou":
        values, worst_first = image_mious(review, model, with_crf), np.argsort
    elif by == "disagreement":
        values, worst_first = disagreements(review, with_crf), lambda v: np.argsort(-v, kind="stable")
    elif by == "class":
        if class_name not in review.source.labels.classes:
            raise ValueError(f"unknown class {class_name!r}; choose one of: {', '.join(review.source.labels.classes)}")
        values, worst_first = class_errors(review, model, class_name, with_crf), lambda v: np.argsort(-v, kind="stable")
    else:
        raise ValueError(f"rank frames by one of: {', '.join(RANKINGS)}; got {by!r}")
    order = worst_first(np.nan_to_num(values, nan=np.inf if by == "miou" else -np.inf))
    return [(int(i), float(values[i])) for i in order]


def frame_views(review: Review, index: int, with_crf: bool = False) -> list[tuple[np.ndarray, str]]:
    """The input with its ground truth's outlines, the ground truth, and each model's prediction with its
    per-image mIoU (for the report's gallery and the Review tab's frame view)."""
    from . import viz

    item = review.items[index][0]
    labelset = review.source.labels
    image, gt = load_pair(item, labelset)
    out = [(viz.outlines(image, gt), f"{item.name} (ground-truth outlines)"),
           (viz.overlay(image, gt, labelset), "ground truth")]
    for r in review.models:
        pred = review.prediction(r.name, with_crf, index)
        miou = image_mious(review, r.name, with_crf)[index]
        out.append((viz.outlines(viz.overlay(image, pred, labelset), gt), f"{r.title}: {miou:.1f} mIoU"))
    return out
