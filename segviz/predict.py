"""``python -m segviz predict``: label maps and overlays for image files, through the app's pipeline.

For each image and model it writes ``OUT/<model>/<image stem>.png`` (one class id per pixel, at
the image's own size) and ``OUT/<model>/<image stem>_overlay.png`` (the coloured mask over the
image). Models are records of either set (``fcn8s_mobilenet_edgetpu.camvid``,
``deeplabv3_mnv2.voc``) or registry keys with one record. Files are written atomically.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from . import viz
from .compare import compare, resolve
from .preprocess import InputError, prepare_image


def _save(array: np.ndarray, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    Image.fromarray(array).save(tmp, format="PNG")
    os.replace(tmp, path)


def predict_files(names: list[str], images: list[str], out: str | os.PathLike, crf: bool = False,
                  alpha: float = 0.6, progress: bool = True, log=print,
                  input_scale: float | None = None) -> tuple[list[Path], list[str]]:
    """Run ``names`` on every image (each network on the image resized by ``input_scale``, default its record's
    own); returns the files written and one line per image that failed."""
    from tqdm import tqdm

    chosen = resolve(names)  # unknown names, mixed label sets and missing weights fail before any work
    crf_params = None
    if crf:
        from .crf import usable_preset

        crf_params = usable_preset(chosen[0].dataset.name)
    stems: dict[str, str] = {}
    for path in images:  # outputs are named by stem: two images with one stem would overwrite each other
        other = stems.setdefault(Path(path).stem, str(path))
        if other != str(path):
            raise ValueError(f"{other} and {path} would both be written as {Path(path).stem}.png; "
                             "rename one or predict them into different --out folders")
    out = Path(out)
    for r in chosen:
        (out / r.name).mkdir(parents=True, exist_ok=True)
    written, failed = [], []
    for path in tqdm(images, desc="predict", unit="image", disable=not progress):
        try:
            prepared = prepare_image(path)
        except InputError as e:
            failed.append(f"{path}: {e}")
            continue
        c = compare(prepared.image, [r.name for r in chosen], crf_params=crf_params, input_scale=input_scale)
        h, w = prepared.original_size
        stem = Path(path).stem
        for r, labels in zip(chosen, c.shown()):
            full = labels if labels.shape == (h, w) else np.asarray(Image.fromarray(labels).resize((w, h), Image.NEAREST))
            shown = viz.overlay(prepared.image, labels, r.labels, alpha)
            if shown.shape[:2] != (h, w):
                shown = np.asarray(Image.fromarray(shown).resize((w, h), Image.BILINEAR))
            for array, name in ((full, f"{stem}.png"), (shown, f"{stem}_overlay.png")):
                _save(array, out / r.name / name)
                written.append(out / r.name / name)
    for line in failed:
        log(f"skipped {line}")
    return written, failed
