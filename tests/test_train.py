"""Training: a few real steps, resume, and two DDP (gloo) processes ending with the same weights."""
import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from segviz.train import Recipe, augment, parameter_groups, schedule, train

MODEL = "fcn32s_efficientnet_lite0"


def test_augment_keeps_image_and_label_aligned():
    """Blocks of 20 px in both directions, each class drawn in its own grey: after scaling, cropping
    and flipping, every pixel away from a block's edge shows its label's grey."""
    import numpy as np
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:60, :80]
    label = ((yy // 20) * 3 + xx // 20).astype(np.uint8) % 5  # 3 x 4 blocks, 5 classes: vertical edges too
    image = np.repeat((label * 60)[..., None], 3, axis=2).astype(np.uint8)
    recipe = Recipe(model=MODEL, crop=(40, 64), scale=(0.5, 1.0))
    for _ in range(20):
        img, lab = augment(image, label, recipe, rng, ignore=11)
        assert img.shape == (3, 40, 64) and lab.shape == (40, 64)
        neighbours = F.pad(lab[None, None].float(), (1, 1, 1, 1), mode="replicate")
        inside = (F.max_pool2d(neighbours, 3, 1) == -F.max_pool2d(-neighbours, 3, 1))[0, 0] & (lab != 11)
        shown = (img.mean(0) * 255 / 60).round().long()
        assert inside.sum() > 500 and (shown[inside] == lab[inside]).all()


def test_schedule_warms_up_then_decays_to_zero():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = schedule(opt, total=100, warmup=10)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])) and lrs[-1] < 0.01
    # cosine: halfway through the decay the rate is half the peak
    assert lrs[9 + 45] == pytest.approx(0.5, abs=0.02)


def test_photometric_jitter_changes_colours_but_not_labels():
    import numpy as np

    image = np.random.default_rng(1).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    label = np.random.default_rng(2).integers(0, 11, (60, 80), dtype=np.uint8)
    plain = Recipe(model=MODEL, crop=(60, 80), scale=(1.0, 1.0))
    jitter = Recipe(model=MODEL, crop=(60, 80), scale=(1.0, 1.0), photometric=1.0)
    a_img, a_lab = augment(image, label, plain, np.random.default_rng(0), ignore=11)
    b_img, b_lab = augment(image, label, jitter, np.random.default_rng(0), ignore=11)
    assert torch.equal(a_lab, b_lab) and not torch.allclose(a_img, b_img)
    assert 0 <= b_img.min() and b_img.max() <= 1


def test_train_defaults_are_the_recipe_defaults():
    """`python -m segviz train --model M` trains with the bundled models' recipe, the one Recipe() holds."""
    from segviz.cli import build_parser, recipe_of

    default = Recipe(model=MODEL)
    assert (default.epochs, default.class_weights) == (20, "sqrt_median_frequency")  # the README's recipe
    assert recipe_of(build_parser().parse_args(["train", "--model", MODEL])) == default


def test_backbone_lr_trains_the_pretrained_backbone_slower_through_warm_up_and_decay():
    """--backbone-lr 0.1: the ImageNet-pretrained backbone's parameters (every one of them, and nothing else)
    step at a tenth of the rate of the layers trained from scratch, at every step of the schedule."""
    from segviz import registry
    from segviz.cli import build_parser, recipe_of

    recipe = recipe_of(build_parser().parse_args(["train", "--model", MODEL, "--backbone-lr", "0.1"]))
    assert recipe.backbone_lr == 0.1
    model = registry.build(MODEL, num_classes=11, backbone_weights=None)
    groups = parameter_groups(model, recipe)
    ids = [[id(p) for p in g["params"]] for g in groups]
    assert sorted(ids[0] + ids[1]) == sorted(id(p) for p in model.parameters())  # each parameter once
    assert set(ids[0]) == {id(p) for p in model.backbone.parameters()}
    opt = torch.optim.AdamW(groups, lr=recipe.lr)
    sched = schedule(opt, total=20, warmup=5)
    for _ in range(12):
        backbone, rest = (g["lr"] for g in opt.param_groups)
        assert backbone == pytest.approx(0.1 * rest) and rest > 0
        opt.step()
        sched.step()
    assert len(parameter_groups(model, Recipe(model=MODEL))) == 1  # the default: one rate for all


def test_recipe_rejects_nonsense():
    for bad in (dict(eval_every=0), dict(epochs=0), dict(scale=(1.0, 0.5)), dict(ema=1.0), dict(backbone_lr=0.0),
                dict(backbone_lr=1.5),
                dict(val_split=None, select="best")):
        with pytest.raises(ValueError):
            Recipe(model=MODEL, **bad)


def test_train_steps_log_and_resume(camvid_root, tmp_path):
    recipe = Recipe(model=MODEL, epochs=2, batch_size=2, crop=(64, 96), eval_every=1)
    first = train(recipe, data=camvid_root, out=tmp_path, limit=4, progress=False, workers=0, max_steps=2)
    run = tmp_path / MODEL
    assert first.steps == 2 and [json.loads(line)["epoch"] for line in (run / "log.jsonl").read_text().split("\n")
                                 if line] == [1]
    resumed = train(recipe, data=camvid_root, out=tmp_path, limit=4, progress=False, workers=0, resume=True)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().split("\n") if line]
    assert [r["epoch"] for r in log] == [1, 2] and all("val_miou" in r for r in log) and resumed.steps == 4
    assert round(resumed.best["miou"], 2) == max(r["val_miou"] for r in log)  # the log rounds to 2 places
    assert (run / "best.safetensors").exists() and (run / "last.pt").exists()
    with pytest.raises(ValueError, match="another recipe.*lr"):
        train(Recipe(model=MODEL, epochs=2, batch_size=2, crop=(64, 96), lr=0.5), data=camvid_root, out=tmp_path,
              resume=True, limit=4, progress=False)
    # A checkpoint written before an option existed resumes with it off, and not with it on.
    state = torch.load(run / "last.pt", weights_only=True)
    del state["recipe"]["backbone_lr"]
    torch.save(state, run / "last.pt")
    again = dict(data=camvid_root, out=tmp_path, limit=4, progress=False, workers=0, resume=True)
    with pytest.raises(ValueError, match="another recipe.*backbone_lr"):
        train(Recipe(model=MODEL, epochs=2, batch_size=2, crop=(64, 96), eval_every=1, backbone_lr=0.1), **again)
    assert train(recipe, **again).steps == 4  # finished already: nothing more to do


@pytest.mark.slow  # resuming at an epoch's end is in the default run (test_train_steps_log_and_resume)
def test_max_steps_inside_an_epoch_resumes_at_that_step(camvid_root, tmp_path):
    """Stopping after 3 of 4 steps and resuming equals running 4 steps straight: same data, same weights."""
    recipe = Recipe(model=MODEL, epochs=2, batch_size=2, crop=(64, 96), photometric=0.5, val_split=None, select="last")
    same = dict(data=camvid_root, limit=4, progress=False, layout="contiguous")
    straight = train(recipe, out=tmp_path / "a", workers=0, **same)
    part = train(recipe, out=tmp_path / "b", workers=0, max_steps=3, **same)
    log = tmp_path / "b" / MODEL / "log.jsonl"
    assert part.steps == 3 and [json.loads(l)["epoch"] for l in log.read_text().split("\n") if l] == [1]
    resumed = train(recipe, out=tmp_path / "b", workers=1, resume=True, **same)
    assert resumed.steps == 4
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5), k
    # The interrupted epoch's log line counts the steps taken before the stop too (its mean loss).
    assert resumed.log[-1]["loss"] == pytest.approx(straight.log[-1]["loss"], rel=1e-4)


@pytest.mark.slow  # tens of seconds of training in subprocesses
def test_sigkill_mid_epoch_then_resume_takes_the_same_steps(camvid_root, tmp_path):
    """A run killed with SIGKILL right after a mid-epoch checkpoint, resumed, ends with the weights of
    an uninterrupted run (same seed, one process)."""
    import signal
    import subprocess
    import sys
    import time

    STEPS = 24  # on a fast CPU 8 steps of 64x96 crops passed between two looks at the checkpoint: kill came too late
    args = [sys.executable, "-m", "segviz", "train", "--model", MODEL, "--data", str(camvid_root), "--epochs", "1",
            "--batch-size", "2", "--size", "64x96", "--train-split", "seq:0001TP", "--val-split", "none",
            "--checkpoint-every", "2", "--workers", "0", "--max-steps", str(STEPS), "--layout", "contiguous"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(args + ["--out", str(tmp_path / "straight")], cwd=root, env=env, check=True, capture_output=True)
    killed = subprocess.Popen(args + ["--out", str(tmp_path / "killed")], cwd=root, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "killed" / MODEL / "last.pt"
    deadline = time.time() + 240
    while time.time() < deadline:  # wait for a mid-epoch checkpoint (step 4 or later), then kill
        if ckpt.exists():
            try:
                if torch.load(ckpt, weights_only=True)["step"] >= 4:
                    break
            except Exception:  # noqa: BLE001 - caught between write and rename: look again
                pass
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    step = torch.load(ckpt, weights_only=True)["step"]
    assert 4 <= step < STEPS
    subprocess.run(args + ["--out", str(tmp_path / "killed"), "--resume"], cwd=root, env=env, check=True,
                   capture_output=True)
    a = torch.load(tmp_path / "straight" / MODEL / "last.pt", weights_only=True)
    b = torch.load(ckpt, weights_only=True)
    assert a["step"] == b["step"] == STEPS
    for k in a["model"]:
        assert torch.allclose(a["model"][k].float(), b["model"][k].float(), atol=1e-5), k


def _worker(rank, world, port, data, out):
    import segviz.train

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    # A busy CPU can time the layouts differently in each process: make them disagree outright.
    fmt = torch.channels_last if rank == 0 else torch.contiguous_format
    segviz.train.faster_memory_format = lambda *args: fmt
    recipe = Recipe(model=MODEL, epochs=1, batch_size=2, crop=(64, 96), eval_every=1)
    result = train(recipe, data=data, out=out, max_steps=3, limit=8, progress=False, device="cpu", workers=0)
    torch.save(result.model.state_dict(), os.path.join(out, f"rank{rank}.pt"))


@pytest.mark.slow  # tens of seconds of training in subprocesses
def test_two_gloo_processes_end_with_the_same_weights(camvid_root, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(r, 2, port, str(camvid_root), str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
        assert p.exitcode == 0
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    init = torch.load(tmp_path / MODEL / "last.pt", weights_only=True)["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    moved = [k for k in a if a[k].is_floating_point() and not torch.equal(a[k], init[k])]
    assert not moved  # rank 0 saved exactly the synchronised weights
    from segviz.registry import build

    # The backbone starts from ImageNet weights whatever the seed (the head's start is random).
    fresh = build(MODEL, num_classes=11, backbone_weights="imagenet").state_dict()
    backbone = [k for k in a if k.startswith("backbone.") and a[k].is_floating_point()]
    assert backbone and any(not torch.equal(a[k], fresh[k]) for k in backbone), "training changed nothing"


@pytest.mark.slow
def test_a_held_out_run_bundles_with_its_held_out_scores(camvid_root, tmp_path, monkeypatch):
    """`weights bundle --heldout-run`: the manifest entry carries the held-out split, the selected
    and the last epoch's scores, and the file it names loads with the sha256 it records."""
    from segviz.bundle import bundle, heldout_scores
    from segviz.weights import sha256_file

    recipe = Recipe(model=MODEL, epochs=2, batch_size=2, crop=(64, 96), eval_every=1,
                    train_split="noseq:0006R0", val_split="seq:0006R0")
    train(recipe, data=camvid_root, out=tmp_path / "runs", limit=4, progress=False, workers=0)
    run = tmp_path / "runs" / MODEL
    held = heldout_scores(run)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert held["split"] == "seq:0006R0" and held["last_epoch"] == 2 and held["last_miou"] == log[-1]["val_miou"]
    assert held["miou"] == round(max(r["val_miou"] for r in log), 2) and set(held["per_class_iou"]) >= {"Sky", "Road"}
    assert held["weights_sha256"] == sha256_file(run / "best.safetensors")
    manifest = tmp_path / "weights" / "manifest.json"
    manifest.parent.mkdir()
    entry = bundle(MODEL, run, data=camvid_root, manifest=manifest, heldout=held)
    assert entry["train_split"] == "noseq:0006R0" and entry["heldout"] == held and entry["val_trained_on"]
    assert entry["epoch_seconds_median"] == round((log[0]["seconds"] + log[1]["seconds"]) / 2, 1)
    assert json.loads(manifest.read_text())["models"][f"{MODEL}.camvid"]["sha256"] == sha256_file(
        manifest.parent / entry["file"])
    # Bundled again without --heldout-run (as a train+val run of the recipe is): the held-out record stays, and the
    # same weights leave the file byte for byte as it was (safetensors orders its metadata differently each save).
    first = (manifest.parent / entry["file"]).read_bytes()
    again = bundle(MODEL, run, data=camvid_root, manifest=manifest)
    assert again["heldout"] == held and again["sha256"] == entry["sha256"]
    assert (manifest.parent / entry["file"]).read_bytes() == first and not list(manifest.parent.glob(".*.tmp"))
    entry = json.loads(manifest.read_text())["models"][f"{MODEL}.camvid"]
    # Bundling again, interrupted while it evaluates the new file: the bundled file and its entry stay a pair.
    import segviz.bundle

    before = (manifest.read_bytes(), (manifest.parent / entry["file"]).read_bytes())
    from segviz.registry import build
    from segviz.weights import load_safetensors, save_safetensors

    changed = load_safetensors(build(MODEL, num_classes=11), run / "best.safetensors")  # other weights to bundle
    with torch.no_grad():
        next(changed.parameters()).add_(0.5)
    save_safetensors(changed, run / "best.safetensors", {"model": MODEL})
    calls = []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return evaluate(*a, **k)

    evaluate = segviz.bundle.evaluate
    monkeypatch.setattr(segviz.bundle, "evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        bundle(MODEL, run, data=camvid_root, manifest=manifest)
    assert (manifest.read_bytes(), (manifest.parent / entry["file"]).read_bytes()) == before
    assert sorted(f.name for f in manifest.parent.iterdir()) == sorted(["manifest.json", entry["file"]])
    with pytest.raises(ValueError, match="not on a held-out sequence"):
        heldout_scores(_run_with_val_split(tmp_path, "val"))


def test_a_held_out_run_of_another_recipe_is_refused(tmp_path):
    """The manifest's held-out column says 'a run of the same recipe': only what says where a run trained, its
    seed and how often it validated may differ; a held-out run of another recipe is refused."""
    from segviz.bundle import bundle, recipe_differences

    a = {"model": MODEL, "epochs": 20, "crop": [176, 240], "seed": 0, "train_split": "trainval", "val_split": None,
         "select": "last", "eval_every": 2, "best": {"epoch": 20}}
    b = {**a, "seed": 1, "train_split": "noseq:0006R0", "val_split": "seq:0006R0", "select": "best", "eval_every": 5}
    assert recipe_differences(a, b) == []
    assert recipe_differences(a, {**b, "epochs": 40, "crop": [256, 352]}) == ["crop", "epochs"]
    assert recipe_differences(a, {**a, "ema": 0.999}) == ["ema"]  # a field one recipe lacks differs too
    assert recipe_differences(a, {**a, "ema": 0.0}) == []  # ... unless it is an option added later, off
    assert recipe_differences({**a, "aux_weight": 0.4}, a) == ["aux_weight"]
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.json").write_text(json.dumps(a))
    with pytest.raises(ValueError, match="recipe differs .* in epochs"):
        bundle(MODEL, run, manifest=tmp_path / "manifest.json", heldout={"recipe": {**b, "epochs": 40}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # refused before anything was written


def _run_with_val_split(tmp_path, split):
    run = tmp_path / "other"
    run.mkdir()
    (run / "recipe.json").write_text(json.dumps({"val_split": split}))
    return run


def test_held_out_scores_are_recorded_for_a_bundled_model_without_touching_its_weights(tmp_path):
    from segviz.bundle import record_heldout

    manifest = tmp_path / "manifest.json"
    entry = {"model": MODEL, "file": f"{MODEL}.camvid.safetensors", "sha256": "ab" * 32, "val_miou": 56.8}
    manifest.write_text(json.dumps({"models": {f"{MODEL}.camvid": entry}}))
    held = {"split": "seq:0006R0", "miou": 40.0, "recipe": {"model": MODEL}}
    record_heldout(f"{MODEL}.camvid", held, manifest)
    assert json.loads(manifest.read_text())["models"][f"{MODEL}.camvid"] == {**entry, "heldout": held}
    with pytest.raises(ValueError, match="not fcn32s"):
        record_heldout(f"{MODEL}.camvid", {**held, "recipe": {"model": "fcn8s_efficientnet_lite0"}}, manifest)
    with pytest.raises(ValueError, match="no bundled model"):
        record_heldout("unet_efficientnet_lite0.camvid", held, manifest)
    # scores of the model run at another input scale than the record's describe something else
    manifest.write_text(json.dumps({"models": {f"{MODEL}.camvid": {**entry, "input_scale": 2.0}}}))
    with pytest.raises(ValueError, match="input scale 1, .* runs at 2"):
        record_heldout(f"{MODEL}.camvid", held, manifest)


def test_a_held_out_run_is_scored_at_the_input_scale_its_model_is_bundled_at(camvid_root, tmp_path):
    """`weights bundle --input-scale S --heldout-run RUN`: the run's kept weights scored on the frames enlarged S times
    (mIoU, per-class IoU, accuracies), its training-time validation kept as the mIoU at 1; scores at another scale,
    or a file of scores with no weights to run, are refused before anything is written."""
    from segviz.bundle import bundle, heldout_of, heldout_scores, rescored
    from segviz.data.camvid import CamVid
    from segviz.evaluate import evaluate
    from segviz.registry import build
    from segviz.weights import load_safetensors

    model_name = "fcn8s_mobilenet_edgetpu"
    recipe = Recipe(model=model_name, epochs=1, batch_size=2, crop=(64, 96), eval_every=1,
                    train_split="noseq:0006R0", val_split="seq:0006R0")
    train(recipe, data=camvid_root, out=tmp_path / "runs", limit=2, progress=False, workers=0)
    run = tmp_path / "runs" / model_name
    held = heldout_scores(run)
    at = rescored(run, held, 2.0, data=camvid_root, limit=2)
    model = load_safetensors(build(model_name, num_classes=11), run / "best.safetensors")
    frames = CamVid(camvid_root, "seq:0006R0", limit=2)
    want = evaluate(model, frames, progress=False, input_scale=2.0)
    assert at["input_scale"] == 2.0 and at["miou"] == round(want["miou"], 2)
    assert at["per_class_iou"] == want["per_class_iou"] and at["pixel_acc"] == round(want["pixel_acc"], 2)
    assert at["miou_at_input_scale"] == {"1": held["miou"], "1.5": round(
        evaluate(model, frames, progress=False, input_scale=1.5)["miou"], 2)}
    assert {k: v for k, v in at.items() if k not in want and k not in ("input_scale", "miou_at_input_scale")} == {
        k: v for k, v in held.items() if k not in want}  # split, epochs, recipe, weights as they were
    scores_file = tmp_path / "trial.json"
    scores_file.write_text(json.dumps([{"model": model_name, **held}]))
    with pytest.raises(ValueError, match="holds scores, not weights"):
        heldout_of(scores_file, model_name, 2.0)
    manifest = tmp_path / "weights" / "manifest.json"
    with pytest.raises(ValueError, match="scores are of input scale 1, the model runs at 2"):
        bundle(model_name, run, data=camvid_root, manifest=manifest, heldout=held, input_scale=2.0)
    assert not manifest.parent.exists()


def _finished_run(folder, recipe: Recipe, scores: list[float], per_class: dict, pixel_acc: float):
    from dataclasses import asdict

    run = folder / recipe.model
    run.mkdir(parents=True)
    log = [{"epoch": i + 1, "val_miou": m} for i, m in enumerate(scores)]
    best = max(log, key=lambda r: r["val_miou"], default={"val_miou": -1.0, "epoch": 0})
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    (run / "recipe.json").write_text(json.dumps({**asdict(recipe), "arch": "fcn32s", "best": {
        "miou": best["val_miou"], "epoch": best["epoch"], "per_class_iou": per_class, "pixel_acc": pixel_acc}}))
    return run


def test_report_runs_compares_held_out_runs_against_the_first(tmp_path, capsys):
    from segviz.cli import main

    held = {"train_split": "noseq:0006R0", "val_split": "seq:0006R0"}
    _finished_run(tmp_path / "A", Recipe(model=MODEL, epochs=2, **held), [30.0, 31.5],
                  {"Sky": 80.0, "Road": 90.0, "Bicyclist": 1.0}, 80.04)
    _finished_run(tmp_path / "B", Recipe(model=MODEL, epochs=3, crop=(256, 352), **held), [32.0, 35.25, 34.0],
                  {"Sky": 82.0, "Road": 91.0, "Bicyclist": 0.0}, 81.0)
    assert main(["report", "--runs", str(tmp_path / "A"), str(tmp_path / "B" / MODEL)]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[2] == f"| A/{MODEL} | the baseline | 31.50 (2) | 85.00 | 31.50 (2) | 80.0 | 2 of 2 |"
    assert rows[3] == f"| B/{MODEL} | epochs 3, crop 256x352 | 35.25 (2) | 86.50 | 34.00 (3) | 81.0 | 3 of 3 |"
    assert main(["report", "--runs", str(tmp_path)]) == 2
    assert "holds no training runs (recipe.json)" in capsys.readouterr().err
    started = _finished_run(tmp_path / "C", Recipe(model=MODEL, epochs=3, **held), [], {}, 0.0)
    (started / "log.jsonl").write_text(json.dumps({"epoch": 1, "loss": 0.9}) + "\n")  # trained, not yet validated
    assert main(["report", "--runs", str(started)]) == 2
    assert "has no validated epoch yet" in capsys.readouterr().err


def test_report_runs_compares_with_a_first_run_written_before_a_recipe_field_existed(tmp_path, capsys):
    from segviz.cli import main

    held = {"train_split": "noseq:0006R0", "val_split": "seq:0006R0"}
    old = _finished_run(tmp_path / "old", Recipe(model=MODEL, epochs=2, **held), [30.0], {"Sky": 80.0}, 80.0)
    recipe = json.loads((old / "recipe.json").read_text())
    del recipe["ema"], recipe["backbone_lr"]  # options added after this run was made
    (old / "recipe.json").write_text(json.dumps(recipe))
    _finished_run(tmp_path / "new", Recipe(model=MODEL, epochs=2, ema=0.995, **held), [31.0], {"Sky": 81.0}, 81.0)
    assert main(["report", "--runs", str(old), str(tmp_path / "new")]) == 0
    assert capsys.readouterr().out.splitlines()[3].startswith(f"| new/{MODEL} | ema 0.995 |")  # backbone_lr 1: as before


def test_the_layout_probe_takes_turns_and_keeps_each_layouts_fastest_step():
    """A burst of other work during one layout's first timed step must not decide the layout: here
    channels_last is the faster (1 s against 2 s a step) but its first timed step took 6 s."""
    from torch import nn

    from segviz.train import faster_memory_format

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            return {"out": self.conv(x)}

    def scripted(durations):  # a clock read twice per step, advancing by that step's duration
        now, reads = [0.0], iter(d for pair in ((0.0, d) for d in durations) for d in pair)

        def clock():
            now[0] += next(reads)
            return now[0]
        return clock

    x, y = torch.rand(2, 3, 8, 8), torch.zeros(2, 8, 8, dtype=torch.long)
    # call order: warm-up contiguous, warm-up channels_last, then (contiguous, channels_last) per round
    burst = [9.0, 9.0, 2.0, 6.0, 2.0, 1.0, 2.0, 1.0]
    assert faster_memory_format(Net(), x, y, clock=scripted(burst)) == torch.channels_last
    assert faster_memory_format(Net(), x, y, rounds=1, clock=scripted(burst[:4])) == torch.contiguous_format
    steady = [9.0, 9.0, 1.5, 2.5, 1.6, 2.4, 1.4, 2.6]
    assert faster_memory_format(Net(), x, y, clock=scripted(steady)) == torch.contiguous_format


def test_a_trial_backbones_held_out_run_is_recorded_with_its_score_at_a_larger_input(camvid_root, tmp_path):
    """`weights trial --heldout-run RUN`: the held-out scores of a trial configuration's run, and its kept weights'
    mIoU with the frames enlarged (`eval --input-scale`), in the trial asset, from which `weights bundle` can take
    them later; another backbone's run is refused."""
    from segviz.bundle import heldout_of, heldout_scores, record_trial
    from segviz.data.camvid import CamVid
    from segviz.evaluate import evaluate
    from segviz.registry import build
    from segviz.weights import load_safetensors

    trial = "fcn8s_efficientnet_lite0"  # the compact backbone until MobileNet-EdgeTPU replaced it
    recipe = Recipe(model=trial, epochs=1, batch_size=2, crop=(64, 96), eval_every=1,
                    train_split="noseq:0006R0", val_split="seq:0006R0")
    train(recipe, data=camvid_root, out=tmp_path / "runs", limit=2, progress=False, workers=0)
    run, asset = tmp_path / "runs" / trial, tmp_path / "trial.json"
    entry = record_trial(run, asset, input_scales=(1.5,), data=camvid_root, limit=2)
    model = load_safetensors(build(trial, num_classes=11), run / "best.safetensors")
    frames = CamVid(camvid_root, "seq:0006R0", limit=2)
    assert entry == {"model": trial, **heldout_scores(run), "command": entry["command"], "miou_at_input_scale": {
        "1.5": round(evaluate(model, frames, progress=False, input_scale=1.5)["miou"], 2)}}
    assert json.loads(asset.read_text()) == [entry]
    record_trial(run, asset, input_scales=(1.5,), data=camvid_root, limit=2)  # recorded again: replaced, not added
    assert json.loads(asset.read_text()) == [entry]
    # `weights bundle --heldout-run assets/trial_heldout.json` takes the run's scores from there once its folder is gone
    # (with its mIoU at the larger input, which the bundled record keeps beside its held-out scores)
    assert heldout_of(asset, trial) == {**heldout_of(run, trial), "miou_at_input_scale": entry["miou_at_input_scale"]}
    assert heldout_of(run, trial) == heldout_scores(run)
    with pytest.raises(ValueError, match="records no held-out run of unet_efficientnet_lite0"):
        heldout_of(asset, "unet_efficientnet_lite0")
    compact = tmp_path / "compact"
    compact.mkdir()
    (compact / "recipe.json").write_text(json.dumps({**json.loads((run / "recipe.json").read_text()),
                                                     "model": "fcn8s_mobilenet_edgetpu"}))
    (compact / "log.jsonl").write_text((run / "log.jsonl").read_text())
    with pytest.raises(ValueError, match="not a trial configuration"):
        record_trial(compact, asset, data=camvid_root, limit=2)
    assert json.loads(asset.read_text()) == [entry]
