"""Turn a finished training run into bundled weights: float16 safetensors + a manifest entry."""
from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

import torch

from . import registry
from .registry import spec_fields
from .data.camvid import CamVid, default_root, resolve_split
from .evaluate import evaluate
from .train import with_later_options
from .weights import MANIFEST, load_safetensors, read_manifest, same_contents, save_safetensors, sha256_file

SUBSET_STEP = 6  # the CI subset: every 6th val image (17 of 101)


def val_subset(data=None) -> CamVid:
    ds = CamVid(data, "val")
    return ds.subset(range(0, len(ds), SUBSET_STEP))


def heldout_scores(run_dir: str | os.PathLike) -> dict:
    """The sequence-held-out validation of a run (``--holdout SEQ``): its selected epoch's scores and,
    since that epoch was chosen on these very frames and so flatters a little, the last epoch's."""
    run_dir = Path(run_dir)
    recipe = json.loads((run_dir / "recipe.json").read_text())
    if not str(recipe.get("val_split", "")).startswith("seq:"):
        raise ValueError(f"{run_dir} validated on {recipe.get('val_split')!r}, not on a held-out sequence (seq:SEQ)")
    scored = [r for r in map(json.loads, (run_dir / "log.jsonl").read_text().splitlines()) if "val_miou" in r]
    if not scored:
        raise ValueError(f"{run_dir} has no validated epoch yet")
    return {"split": recipe["val_split"], "miou": round(recipe["best"]["miou"], 2), "epoch": recipe["best"]["epoch"],
            "last_miou": scored[-1]["val_miou"], "last_epoch": scored[-1]["epoch"],
            "per_class_iou": recipe["best"]["per_class_iou"],
            **{k: round(recipe["best"][k], 2) for k in ("pixel_acc", "class_acc") if k in recipe["best"]},
            # what else measured these weights (the CRF study, assets/crf.json) names them by this
            "weights_sha256": sha256_file(best) if (best := run_dir / "best.safetensors").exists() else None,
            "recipe": {k: v for k, v in recipe.items() if k not in ("best", "arch")}}


def heldout_of(source: str | os.PathLike, model: str, input_scale: float = 1.0, data=None) -> dict:
    """The held-out validation of ``model``'s recipe from ``source``: a held-out run's folder
    (:func:`heldout_scores`), or a file :func:`record_trial` wrote (assets/trial_heldout.json), whose entry for
    ``model`` holds the same scores of a run whose folder need not be kept, and its mIoU at other input scales.
    With ``input_scale`` (a run's folder only), the scores are of its kept weights run at that scale
    (:func:`rescored`)."""
    source = Path(source)
    if source.suffix != ".json":
        scores = heldout_scores(source)
        return scores if input_scale == 1 else rescored(source, scores, input_scale, data)
    if input_scale != 1:
        raise ValueError(f"{source} holds scores, not weights to run at input scale {input_scale:g}: "
                         "name the held-out run's folder")
    entry = next((r for r in json.loads(source.read_text()) if r["model"] == model), None)
    if entry is None:
        raise ValueError(f"{source} records no held-out run of {model}")
    return {k: v for k, v in entry.items() if k not in ("model", "command")}


INPUT_SCALES = (1.5, 2.0)  # besides 1 and the model's own, the input scales a held-out run is scored at


def miou_at_scales(model, data_set, scales) -> dict:
    """``{"1.5": mIoU, ...}``: the model's mIoU on ``data_set`` run on the frames resized by each scale."""
    return {f"{s:g}": round(evaluate(model, data_set, progress=False, input_scale=s)["miou"], 2) for s in scales}


def rescored(run_dir: str | os.PathLike, scores: dict, input_scale: float, data=None, limit: int | None = None) -> dict:
    """A held-out run's :func:`heldout_scores` with its kept weights run at ``input_scale``
    (:attr:`segviz.records.Record.input_scale`): mIoU, per-class IoU and accuracies at that scale, and in
    ``miou_at_input_scale`` the mIoU at 1 (the validation during training) and :data:`INPUT_SCALES`. The
    last epoch's figure stays the one validated during training, at 1. ``limit``: the split's first frames."""
    data_set = CamVid(data, scores["split"], limit=limit)
    name = scores["recipe"]["model"]
    model = load_safetensors(registry.build(name, num_classes=data_set.labels.num_classes),
                             Path(run_dir) / "best.safetensors")
    at = evaluate(model, data_set, progress=False, input_scale=input_scale)
    others = miou_at_scales(model, data_set, [s for s in INPUT_SCALES if s != input_scale])
    return {**scores, "input_scale": input_scale, "miou": round(at["miou"], 2), "per_class_iou": at["per_class_iou"],
            **{k: round(at[k], 2) for k in ("pixel_acc", "class_acc")},
            "miou_at_input_scale": dict(sorted({"1": scores["miou"], **others}.items(), key=lambda kv: float(kv[0])))}


def run_directory(path: str | os.PathLike) -> Path:
    """A training run's folder: ``path`` itself when it holds recipe.json, else its one subfolder that does
    (``train --out DIR`` writes DIR/MODEL/)."""
    path = Path(path)
    if (path / "recipe.json").exists():
        return path
    found = sorted(p.parent for p in path.glob("*/recipe.json"))
    if len(found) != 1:
        raise FileNotFoundError(f"{path} holds {'no' if not found else len(found)} training runs (recipe.json); "
                                "name one run's folder")
    return found[0]


def runs_table(paths) -> list[str]:
    """Markdown rows comparing training runs validated on a held-out sequence (an ablation): each run's recipe
    where it differs from the first run's, its best epoch's mIoU (11 classes, and 10 without Bicyclist), the
    last validated epoch's, pixel accuracy and how far it has got. Runs still training show their progress."""
    rows = ["| run | recipe (vs the first run) | held-out mIoU (epoch) | without Bicyclist | last epoch's mIoU | "
            "pixel acc | epochs done |", "|---|---|---|---|---|---|---|"]
    base = None
    for path in paths:
        run = run_directory(path)
        scores = heldout_scores(run)
        recipe = with_later_options(scores["recipe"])
        base = base or recipe
        diff = ", ".join(f"{k} {_fmt(v)}" for k, v in recipe.items() if k not in ("checkpoint_every",) and v != base.get(k))
        rest = [v for k, v in scores["per_class_iou"].items() if k != "Bicyclist" and v is not None]
        done = len((run / "log.jsonl").read_text().splitlines())
        best = json.loads((run / "recipe.json").read_text())["best"]
        rows.append(f"| {run.parent.name}/{run.name} | {diff or 'the baseline'} | {scores['miou']:.2f} ({scores['epoch']}) | "
                    f"{sum(rest) / len(rest):.2f} | {scores['last_miou']:.2f} ({scores['last_epoch']}) | "
                    f"{best['pixel_acc']:.1f} | {done} of {recipe['epochs']} |")
    return rows


# What says where and how a run of a recipe went, not what the recipe is: the frames it trained and validated on,
# the epoch it kept, its seed, how often it validated and checkpointed.
RUN_FIELDS = frozenset({"model", "arch", "best", "train_split", "val_split", "select", "seed", "eval_every",
                        "checkpoint_every"})


def recipe_differences(a: dict, b: dict) -> list[str]:
    """The recipe fields in which two runs' recipes differ, :data:`RUN_FIELDS` left out; a recipe recorded before
    an option existed trained with it off (:func:`segviz.train.with_later_options`)."""
    a, b = with_later_options(a), with_later_options(b)
    return sorted(k for k in a.keys() | b.keys() if k not in RUN_FIELDS and a.get(k) != b.get(k))


def _fmt(v) -> str:
    return "x".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def _trained_on(data, train_split: str, split: str) -> bool:
    root = default_root(data)
    names = {image.name for image, _ in resolve_split(root, train_split)}
    return bool(names & {image.name for image, _ in resolve_split(root, split)})


def bundled_scale(name: str, manifest: str | os.PathLike | None = None, input_scale: float | None = None) -> float:
    """The input scale ``<name>.camvid`` is bundled at: ``input_scale``, else the record's present one, else 1."""
    if input_scale is not None:
        return input_scale
    return read_manifest(Path(manifest or MANIFEST)).get(f"{name}.camvid", {}).get("input_scale", 1.0)


def same_scale(heldout: dict, scale: float, runs: str, hint: str = "") -> None:
    """Refuse held-out scores measured at another input scale than the one ``runs`` (a model) runs at."""
    have = heldout.get("input_scale", 1.0)
    if have != scale:
        raise ValueError(f"the held-out scores are of input scale {have:g}, {runs} runs at {scale:g}{hint}")


def bundle(name: str, run_dir: str | os.PathLike, data=None, manifest: str | os.PathLike | None = None,
           heldout: dict | None = None, input_scale: float | None = None) -> dict:
    """Bundle the run in ``run_dir`` (a CamVid run of registry model ``name``) as record
    ``<name>.camvid``, run at ``input_scale`` (:attr:`segviz.records.Record.input_scale`; default: the record's
    present one, else 1), at which every score of the entry is measured. ``heldout``: the sequence-held-out
    validation of the same recipe at that scale (``{"split": "seq:0006R0", "miou": ..., ...}``,
    :func:`heldout_of`), recorded beside the val numbers; without it the record keeps the held-out validation it
    has when that was of the same recipe and scale."""
    run_dir, manifest = Path(run_dir), Path(manifest or MANIFEST)
    record = f"{name}.camvid"
    recipe = json.loads((run_dir / "recipe.json").read_text())
    present = read_manifest(manifest).get(record, {})
    scale = input_scale if input_scale is not None else present.get("input_scale", 1.0)
    if heldout is not None and (differ := recipe_differences(recipe, heldout["recipe"])):
        raise ValueError(f"the held-out run's recipe differs from {run_dir}'s in {', '.join(differ)}: "
                         "its score would not describe these weights' recipe")
    if heldout is not None:
        same_scale(heldout, scale, "the model", f": score the held-out run at {scale:g} (--heldout-run RUN "
                                                f"--input-scale {scale:g})")
    else:
        kept = present.get("heldout")
        if kept is not None and not recipe_differences(recipe, kept["recipe"]) and kept.get("input_scale", 1.0) == scale:
            heldout = kept
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().split("\n") if line.strip()]
    val = CamVid(data, "val")
    model = registry.build(name, num_classes=val.labels.num_classes)
    load_safetensors(model, run_dir / "best.safetensors")
    full = evaluate(model, val, input_scale=scale)
    out = manifest.parent / f"{record}.safetensors"
    # Written beside the bundled file and evaluated there; it replaces the bundled file only with the manifest
    # entry that names its sha256, so an interrupted bundle leaves the old pair intact.
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    meta = {"model": name, "record": record, "num_classes": val.labels.num_classes, "dataset": "camvid"}
    try:
        save_safetensors(model, tmp, meta, dtype=torch.float16)
        half = evaluate(load_safetensors(model, tmp), val, input_scale=scale)
        dtype = "float16"
        if abs(half["miou"] - full["miou"]) > 0.1:  # float16 storage must not cost quality
            save_safetensors(model, tmp, meta)
            half, dtype = evaluate(load_safetensors(model, tmp), val, input_scale=scale), "float32"
        subset = val_subset(data)
        sub = evaluate(model, subset, input_scale=scale)
        spec = registry.get_spec(name)
        keep = out.exists() and same_contents(out, tmp)  # the same weights again: the file stays byte for byte
        entry = {
            "model": name, **spec_fields(spec), "file": out.name, "sha256": sha256_file(out if keep else tmp),
            "dtype": dtype, "num_params": registry.count_params(model),
            "num_classes": val.labels.num_classes, "dataset": "camvid", "input_scale": scale,
            "train_split": recipe.get("train_split", "train"),
            "eval_split": "val",
            # a run trained on val's frames (trainval, noseq:SEQ) has a val score that measures nothing
            "val_trained_on": _trained_on(data, recipe.get("train_split", "train"), "val"),
            "val_miou": round(half["miou"], 2), "val_miou_float32": round(full["miou"], 2),
            "val_pixel_acc": round(half["pixel_acc"], 2), "val_class_acc": round(half["class_acc"], 2),
            "per_class_iou": half["per_class_iou"],
            "subset": {"images": [p[0].name for p in subset.pairs], "miou": round(sub["miou"], 3)},
            "recipe": {k: v for k, v in recipe.items() if k != "best"},
            "best_epoch": recipe["best"]["epoch"], "train_seconds": round(sum(r["seconds"] for r in log)),
            # the wall clock above counts the time a run spent paused or sharing the CPU; the median epoch does not
            "epoch_seconds_median": round(statistics.median(r["seconds"] for r in log), 1),
            "train_device": "cpu (2 cores)",
        }
        if heldout is not None:
            entry["heldout"] = heldout
        if not keep:
            os.replace(tmp, out)
        _write_entry(manifest, record, entry)
    finally:
        tmp.unlink(missing_ok=True)
    return entry


def record_heldout(record: str, heldout: dict, manifest: str | os.PathLike | None = None) -> dict:
    """Add the held-out validation of a bundled model's recipe (a run of it with a sequence held out,
    :func:`heldout_scores`) to its manifest entry; the bundled weights stay as they are."""
    manifest = Path(manifest or MANIFEST)
    entry = read_manifest(manifest).get(record)
    if entry is None:
        raise ValueError(f"no bundled model {record!r} in {manifest}")
    if heldout["recipe"]["model"] != entry["model"]:
        raise ValueError(f"the held-out run trained {heldout['recipe']['model']}, not {entry['model']}")
    same_scale(heldout, entry.get("input_scale", 1.0), record)
    entry["heldout"] = heldout
    _write_entry(manifest, record, entry)
    return entry


def _write_entry(manifest: Path, record: str, entry: dict):
    models = json.loads(manifest.read_text())["models"] if manifest.exists() else {}
    models[record] = entry
    tmp = manifest.with_name(manifest.name + ".tmp")
    tmp.write_text(json.dumps({"models": dict(sorted(models.items()))}, indent=1) + "\n")
    os.replace(tmp, manifest)


TRIAL_FILE = "trial_heldout.json"  # in assets/: the held-out runs of the trial backbones' configurations


def record_trial(run_dir: str | os.PathLike, path: str | os.PathLike | None = None, input_scales=INPUT_SCALES, data=None,
                 limit: int | None = None) -> dict:
    """Record a held-out run of a trial backbone's configuration (``registry.TRIAL_BACKBONES``) in
    assets/trial_heldout.json: its :func:`heldout_scores` and, for each of ``input_scales``, the held-out mIoU of
    its kept weights run on the frames resized by that factor (``eval --input-scale``). An earlier entry of the
    same model is replaced. ``limit``: score only the split's first frames (tests)."""
    from . import PROJECT_ROOT

    run_dir = Path(run_dir)
    path = Path(path or PROJECT_ROOT / "assets" / TRIAL_FILE)
    scores = heldout_scores(run_dir)
    name = scores["recipe"]["model"]
    spec = registry.get_spec(name)
    if not spec.trial:
        raise ValueError(f"{name} is not a trial configuration (its backbone is not one of {registry.TRIAL_BACKBONES})")
    data_set = CamVid(data, scores["split"], limit=limit)
    model = load_safetensors(registry.build(name, num_classes=data_set.labels.num_classes), run_dir / "best.safetensors")
    entry = {"model": name, **scores, "miou_at_input_scale": miou_at_scales(model, data_set, input_scales),
        "command": "python -m segviz weights trial --heldout-run RUN"}
    rows = [r for r in (json.loads(path.read_text()) if path.exists() else []) if r["model"] != name] + [entry]
    rows.sort(key=lambda r: (registry.get_spec(r["model"]).order, r["model"]))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(rows, indent=1) + "\n")
    os.replace(tmp, path)
    return entry
