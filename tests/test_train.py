"""Training: a few real steps, resume, and two DDP (gloo) processes ending with the same weights."""
import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from segviz.train import Recipe, augment, lr_factor, train

MODEL = "fcn32s_efficientnet_lite0"


def test_augment_keeps_image_and_label_aligned():
    import numpy as np

    rng = np.random.default_rng(0)
    image = np.zeros((60, 80, 3), np.uint8)
    label = np.zeros((60, 80), np.uint8)
    image[:, 40:] = 255  # right half white = class 1
    label[:, 40:] = 1
    recipe = Recipe(model=MODEL, crop=(40, 64), scale=(0.5, 1.0))
    for _ in range(20):
        img, lab = augment(image, label, recipe, rng, ignore=11)
        assert img.shape == (3, 40, 64) and lab.shape == (40, 64)
        valid = lab != 11
        white = img.mean(0) > 0.5
        agree = (white[valid] == (lab[valid] == 1)).float().mean()
        assert agree > 0.95


def test_schedule_warms_up_then_decays_to_zero():
    assert lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(99, 100, 10) < 0.01


def test_train_steps_log_and_resume(camvid_root, tmp_path):
    recipe = Recipe(model=MODEL, epochs=2, batch_size=2, crop=(64, 96), eval_every=1)
    first = train(recipe, data=camvid_root, out=tmp_path, max_steps=2, limit=4, progress=False)
    run = tmp_path / MODEL
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().split("\n") if line]
    assert log[0]["epoch"] == 1 and "val_miou" in log[0] and first.best["miou"] >= 0
    assert (run / "best.safetensors").exists() and (run / "last.pt").exists()
    # Resume: picks up after epoch 1 and finishes epoch 2.
    second = train(recipe, data=camvid_root, out=tmp_path, resume=True, limit=4, progress=False)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().split("\n") if line]
    assert [r["epoch"] for r in log] == [1, 2]
    assert second.best["epoch"] in (1, 2)


def _worker(rank, world, port, data, out):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    recipe = Recipe(model=MODEL, epochs=1, batch_size=2, crop=(64, 96), eval_every=1)
    result = train(recipe, data=data, out=out, max_steps=3, limit=8, progress=False, device="cpu")
    torch.save(result.model.state_dict(), os.path.join(out, f"rank{rank}.pt"))


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

    fresh = build(MODEL, num_classes=11, backbone_weights="imagenet").state_dict()
    assert any(not torch.equal(a[k], fresh[k]) for k in a if a[k].is_floating_point()), "training changed nothing"
