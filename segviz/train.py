"""Train a registered model on CamVid: resumable, logged, single process or torchrun/DDP.

Recipe for small data on a CPU: ImageNet-pretrained backbone, random scale (0.5-1.0 of the
360x480 frames) + random crop + horizontal flip, median-frequency class weights (SegNet),
AdamW with a linear warm-up and cosine decay, the auxiliary loss (weight 0.4) where the
paper has one. Each epoch writes ``last.pt`` (resume state); the best model by val mIoU is
written to ``best.safetensors``; ``log.jsonl`` gets one line per epoch.
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from . import registry
from .data.camvid import CamVid
from .evaluate import evaluate
from .weights import save_safetensors


@dataclass
class Recipe:
    model: str
    epochs: int = 16
    batch_size: int = 8
    crop: tuple[int, int] = (176, 240)
    scale: tuple[float, float] = (0.5, 1.0)
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    aux_weight: float = 0.4
    class_weights: str = "median_frequency"  # or "sqrt_median_frequency" or "none"
    seed: int = 0
    eval_every: int = 2


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def augment(image: np.ndarray, label: np.ndarray, recipe: Recipe, rng: np.random.Generator, ignore: int):
    """Random scale, random crop (padded with the ignore label) and flip; returns tensors."""
    img = torch.from_numpy(image.copy()).permute(2, 0, 1).float()[None]
    lab = torch.from_numpy(label.astype(np.float32))[None, None]
    s = rng.uniform(*recipe.scale)
    h, w = max(1, round(image.shape[0] * s)), max(1, round(image.shape[1] * s))
    img = F.interpolate(img, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    lab = F.interpolate(lab, size=(h, w), mode="nearest")
    ch, cw = recipe.crop
    if h < ch or w < cw:
        img = F.pad(img, (0, max(0, cw - w), 0, max(0, ch - h)))
        lab = F.pad(lab, (0, max(0, cw - w), 0, max(0, ch - h)), value=ignore)
        h, w = img.shape[-2:]
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    img, lab = img[..., y:y + ch, x:x + cw], lab[..., y:y + ch, x:x + cw]
    if rng.random() < 0.5:
        img, lab = img.flip(-1), lab.flip(-1)
    return img[0] / 255.0, lab[0, 0].long()


def lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _dist_info() -> tuple[int, int]:
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return 0, 1


@dataclass
class TrainResult:
    best: dict  # best validation scores (empty on ranks other than 0)
    model: torch.nn.Module  # the model after the last step


def train(recipe: Recipe, data: str | None = None, out: str | os.PathLike = "runs", resume: bool = False,
          device: str | None = None, max_steps: int | None = None, limit: int | None = None,
          progress: bool = True) -> TrainResult:
    """Train ``recipe.model`` on CamVid train, selecting on val.

    ``max_steps`` stops early and ``limit`` uses only the first images of each split (smoke runs, tests)."""
    rank, world = _dist_info()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    out = Path(out) / recipe.model
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(recipe.seed)

    train_set = CamVid(data, "train", limit=limit)
    val_set = CamVid(data, "val", limit=limit) if rank == 0 else None
    labels = train_set.labels
    spec = registry.get_spec(recipe.model)
    model = registry.build(recipe.model, num_classes=labels.num_classes, backbone_weights="imagenet")
    model = model.to(device, memory_format=torch.channels_last)
    weights = None
    if recipe.class_weights != "none":
        w = train_set.median_frequency_weights()
        weights = torch.tensor(np.sqrt(w) if recipe.class_weights.startswith("sqrt") else w, dtype=torch.float32,
                               device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    steps_per_epoch = math.ceil(len(train_set) / (recipe.batch_size * world))
    total = steps_per_epoch * recipe.epochs
    warmup = int(recipe.warmup_epochs * steps_per_epoch)
    start_epoch, best, log_path = 0, {"miou": -1.0}, out / "log.jsonl"
    if resume and (out / "last.pt").exists():
        state = torch.load(out / "last.pt", map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_epoch, best = state["epoch"], state["best"]
        torch.set_rng_state(state["torch_rng"])
    elif rank == 0 and log_path.exists():
        log_path.unlink()
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    step = start_epoch * steps_per_epoch
    for epoch in range(start_epoch, recipe.epochs):
        t0 = time.time()
        model.train()
        rng = np.random.default_rng(recipe.seed * 1000 + epoch)
        order = rng.permutation(len(train_set))[rank::world]  # each rank its own shard
        losses = []
        bar = tqdm(range(0, len(order), recipe.batch_size), desc=f"{recipe.model} epoch {epoch + 1}/{recipe.epochs}",
                   disable=not progress or rank != 0)
        for b in bar:
            batch = [augment(*train_set[i], recipe, rng, labels.ignore_index) for i in order[b:b + recipe.batch_size]]
            x = model.normalize(torch.stack([im for im, _ in batch]).to(device)).contiguous(memory_format=torch.channels_last)
            y = torch.stack([lab for _, lab in batch]).to(device)
            for group in opt.param_groups:
                group["lr"] = recipe.lr * lr_factor(step, total, warmup)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                result = ddp(x)
                loss = F.cross_entropy(result["out"].float(), y, weight=weights, ignore_index=labels.ignore_index)
                if "aux" in result:
                    loss = loss + recipe.aux_weight * F.cross_entropy(result["aux"].float(), y, weight=weights,
                                                                      ignore_index=labels.ignore_index)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
            step += 1
            if max_steps is not None and step >= max_steps:
                break
        if world > 1:  # BN running statistics are per rank: take rank 0's, as DDP does at each forward
            for buffer in model.buffers():
                dist.broadcast(buffer, 0)
        record = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "train_seconds": round(time.time() - t0, 1)}
        last = epoch + 1 == recipe.epochs or (max_steps is not None and step >= max_steps)
        if rank == 0:
            if (epoch + 1) % recipe.eval_every == 0 or last:
                result = evaluate(model, val_set, device, progress=progress)
                record.update(val_miou=round(result["miou"], 2), val_pixel_acc=round(result["pixel_acc"], 2))
                if result["miou"] > best["miou"]:
                    best = {**result, "epoch": epoch + 1}
                    save_safetensors(model, out / "best.safetensors", {"model": recipe.model, "epoch": str(epoch + 1)})
            record["seconds"] = round(time.time() - t0, 1)
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1, "best": best,
                        "torch_rng": torch.get_rng_state()}, out / "last.pt.tmp")
            os.replace(out / "last.pt.tmp", out / "last.pt")
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            (out / "recipe.json").write_text(json.dumps({**asdict(recipe), "arch": spec.arch, "best": best}, indent=1))
        if last:
            break
    if world > 1:
        dist.destroy_process_group()
    return TrainResult(best if rank == 0 else {}, model)
