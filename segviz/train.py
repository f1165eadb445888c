"""Train a registered model on CamVid: resumable to the exact step, logged, one process or torchrun/DDP.

Recipe for small data on a CPU: ImageNet-pretrained backbone, random scale + random crop +
horizontal flip (+ photometric jitter and blur, optional), median-frequency class weights
(SegNet), AdamW with a linear warm-up and cosine decay, the auxiliary loss (weight 0.4) where
the paper has one, optionally an exponential moving average of the weights, label smoothing or a
lower learning rate for the pretrained backbone (measured in the README's ablation; all off by default).

Data go through a ``DataLoader`` (augmentation in worker processes) with a
``DistributedSampler`` (one shard per rank, the same order for a given seed and epoch). Every
sample's augmentation draws from its own generator seeded by (seed, epoch, index), so the
batches do not depend on the number of workers, and a run resumed in the middle of an epoch
sees exactly the batches the uninterrupted run would have seen.

Outputs in ``OUT/MODEL``: ``last.pt`` (the whole state, written every ``checkpoint_every``
steps and at each epoch's end), ``best.safetensors`` (the best model on the validation split,
or the last one when ``select="last"``), ``log.jsonl`` (one line per epoch) and ``recipe.json``.
"""
from __future__ import annotations

import json
import os
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from tqdm import tqdm

from . import registry
from .backbones import PRETRAINED
from .data.camvid import CamVid
from .evaluate import evaluate
from .weights import save_safetensors


@dataclass
class Recipe:
    model: str
    epochs: int = 20
    batch_size: int = 8
    crop: tuple[int, int] = (176, 240)
    scale: tuple[float, float] = (0.5, 1.0)
    photometric: float = 0.0  # strength of brightness/contrast/saturation/hue jitter + blur (0: off)
    lr: float = 1e-3
    backbone_lr: float = 1.0  # the pretrained backbone's learning rate as a fraction of lr (1: the same)
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    aux_weight: float = 0.4
    class_weights: str = "sqrt_median_frequency"  # or "median_frequency" or "none"
    label_smoothing: float = 0.0
    ema: float = 0.0  # decay of an exponential moving average of the weights (0: off); evaluated and saved
    seed: int = 0
    eval_every: int = 2
    train_split: str = "train"
    val_split: str | None = "val"  # None: no validation (select must be "last")
    select: str = "best"  # "best" on the validation split, or "last"
    checkpoint_every: int = 50  # steps between resume checkpoints (and at every epoch's end)

    def __post_init__(self):
        checks = [(self.epochs >= 1, "epochs must be >= 1"), (self.batch_size >= 1, "batch size must be >= 1"),
                  (self.eval_every >= 1, "eval_every must be >= 1"), (self.lr > 0, "lr must be > 0"),
                  (0 < self.backbone_lr <= 1, "backbone_lr must be in (0, 1]"),
                  (0 < self.scale[0] <= self.scale[1], "scale must be two numbers 0 < low <= high"),
                  (min(self.crop) >= 16, "crop must be at least 16x16"),
                  (0 <= self.photometric <= 1, "photometric must be in [0, 1]"),
                  (0 <= self.ema < 1, "ema must be in [0, 1)"), (0 <= self.label_smoothing < 1, "label smoothing must be in [0, 1)"),
                  (self.checkpoint_every >= 1, "checkpoint_every must be >= 1"),
                  (self.select in ("best", "last"), "select must be 'best' or 'last'"),
                  (self.select == "last" or self.val_split is not None, "select='best' needs a validation split")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        self.crop, self.scale = tuple(self.crop), tuple(self.scale)


# Options added to the recipe after the first runs, with their defaults: off, as every run before them trained.
LATER_OPTIONS = {f.name: f.default for f in fields(Recipe)
                 if f.name in ("photometric", "label_smoothing", "ema", "backbone_lr")}


def with_later_options(recorded: dict) -> dict:
    """A recipe as a run recorded it (recipe.json, a checkpoint, the manifest), with the options added since
    filled in as off: the run trained without them."""
    return {**LATER_OPTIONS, **recorded}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def photometric(img: torch.Tensor, strength: float, rng: np.random.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation (each x[1-0.4s, 1+0.4s]), hue (+-0.05s) in random order,
    then a Gaussian blur with probability 0.3s; ``img`` is (3, H, W) in [0, 1]."""
    from torchvision.transforms.v2 import functional as TF

    ops = [(TF.adjust_brightness, rng.uniform(1 - 0.4 * strength, 1 + 0.4 * strength)),
           (TF.adjust_contrast, rng.uniform(1 - 0.4 * strength, 1 + 0.4 * strength)),
           (TF.adjust_saturation, rng.uniform(1 - 0.4 * strength, 1 + 0.4 * strength)),
           (TF.adjust_hue, rng.uniform(-0.05 * strength, 0.05 * strength))]
    for i in rng.permutation(len(ops)):
        fn, factor = ops[i]
        img = fn(img, float(factor))
    if rng.random() < 0.3 * strength:
        img = TF.gaussian_blur(img, kernel_size=5, sigma=float(rng.uniform(0.1, 1.5)))
    return img.clamp_(0, 1)


def augment(image: np.ndarray, label: np.ndarray, recipe: Recipe, rng: np.random.Generator, ignore: int):
    """Random scale, random crop (padded with the ignore label), flip and photometric jitter; returns tensors."""
    img = torch.from_numpy(image.copy()).permute(2, 0, 1).float()[None]
    lab = torch.from_numpy(label.astype(np.float32))[None, None]
    s = rng.uniform(*recipe.scale)
    h, w = max(1, round(image.shape[0] * s)), max(1, round(image.shape[1] * s))
    img = F.interpolate(img, size=(h, w), mode="bilinear", align_corners=False, antialias=s < 1)
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
    img = img[0].clamp(0, 255) / 255.0
    if recipe.photometric > 0:
        img = photometric(img, recipe.photometric, rng)
    return img, lab[0, 0].long()


class Augmented(Dataset):
    """A CamVid split augmented by :func:`augment`; sample ``i`` of epoch ``e`` always gets the same crop."""

    def __init__(self, data: CamVid, recipe: Recipe):
        self.data, self.recipe, self.epoch = data, recipe, 0

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        rng = np.random.default_rng([self.recipe.seed, self.epoch, i])
        return augment(*self.data[i], self.recipe, rng, self.data.labels.ignore_index)


class SkipSampler(Sampler):
    """A sampler's order with the first ``skip`` indices left out (resuming inside an epoch)."""

    def __init__(self, sampler: DistributedSampler, skip: int):
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        return iter(list(self.sampler)[self.skip:])

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)


def parameter_groups(model: torch.nn.Module, recipe: Recipe) -> list[dict]:
    """The optimizer's parameter groups: one, or with ``recipe.backbone_lr < 1`` the ImageNet-pretrained
    ``model.backbone`` at ``lr * backbone_lr`` and the layers trained from scratch at ``lr``."""
    if recipe.backbone_lr == 1:
        return [{"params": list(model.parameters())}]
    pretrained = list(model.backbone.parameters())
    ids = {id(p) for p in pretrained}
    return [{"params": pretrained, "lr": recipe.lr * recipe.backbone_lr},
            {"params": [p for p in model.parameters() if id(p) not in ids]}]


def schedule(opt: torch.optim.Optimizer, total: int, warmup: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up over ``warmup`` steps, then cosine decay to zero at step ``total``."""
    from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

    cosine = CosineAnnealingLR(opt, T_max=max(1, total - warmup + 1))
    if warmup <= 1:
        return cosine
    return SequentialLR(opt, [LinearLR(opt, start_factor=1 / warmup, total_iters=warmup - 1), cosine],
                        milestones=[warmup - 1])


def faster_memory_format(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, rounds: int = 3,
                         clock=time.perf_counter) -> torch.memory_format:
    """Time training steps in each layout and return the faster: channels_last helps some CPUs and hurts
    dilated depthwise convolutions on others (AVX2-only EPYCs: ~3x). After a warm-up step each, the two
    layouts take turns for ``rounds`` timed steps and each keeps its fastest: other work on the machine only
    ever adds time, and taking turns spreads a burst of it over both (one step each, one layout after the
    other, chose contiguous for a run that channels_last trains 1.6x faster while another job was busy)."""
    import copy

    trials = {fmt: (copy.deepcopy(model).to(memory_format=fmt).train(), x.contiguous(memory_format=fmt))
              for fmt in (torch.contiguous_format, torch.channels_last)}

    def step(fmt) -> float:
        trial, xx = trials[fmt]
        t0 = clock()
        F.cross_entropy(trial(xx)["out"], y, ignore_index=255).backward()
        return clock() - t0

    for fmt in trials:
        step(fmt)  # warm-up
    timings = {fmt: [] for fmt in trials}
    for _ in range(rounds):
        for fmt in trials:
            timings[fmt].append(step(fmt))
    return min(timings, key=lambda fmt: min(timings[fmt]))


def _dist_info() -> tuple[int, int]:
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return 0, 1


def default_workers() -> int:
    """Loader processes: one on a 2-core machine (the model's threads need the rest), up to 4."""
    return max(0, min(4, (os.cpu_count() or 1) // 2))


@dataclass
class TrainResult:
    best: dict  # validation scores of the selected model (empty on ranks other than 0)
    model: torch.nn.Module  # the model after the last step
    steps: int = 0  # optimizer steps taken so far (all epochs)
    log: list = field(default_factory=list)


def _comparable(recipe: Recipe) -> dict:
    """The recipe fields that must not change when a run is resumed (JSON types)."""
    return {k: v for k, v in json.loads(json.dumps(asdict(recipe))).items() if k not in ("eval_every", "checkpoint_every")}


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train(recipe: Recipe, data: str | None = None, out: str | os.PathLike = "runs", resume: bool = False,
          device: str | None = None, max_steps: int | None = None, limit: int | None = None,
          progress: bool = True, workers: int | None = None, layout: str = "auto") -> TrainResult:
    """Train ``recipe.model`` on ``recipe.train_split``, selecting on ``recipe.val_split``.

    ``max_steps`` stops after that many optimizer steps in all (the position inside the epoch is
    checkpointed, so ``resume`` continues exactly there); ``limit`` uses only the first images of
    each split (smoke runs, tests). ``layout``: "auto" (measure on the CPU), "contiguous" or
    "channels_last" (runs that must match bit for bit need the same one)."""
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

    train_set = CamVid(data, recipe.train_split, limit=limit)
    val_set = CamVid(data, recipe.val_split, limit=limit) if rank == 0 and recipe.val_split else None
    labels = train_set.labels
    spec = registry.get_spec(recipe.model)
    model = registry.build(recipe.model, num_classes=labels.num_classes,
                           backbone_weights=PRETRAINED[spec.backbone]).to(device)
    weights = None
    if recipe.class_weights != "none":
        w = train_set.median_frequency_weights()
        weights = torch.tensor(np.sqrt(w) if recipe.class_weights.startswith("sqrt") else w, dtype=torch.float32,
                               device=device)
    opt = torch.optim.AdamW(parameter_groups(model, recipe), lr=recipe.lr, weight_decay=recipe.weight_decay)
    augmented = Augmented(train_set, recipe)
    sampler = DistributedSampler(augmented, num_replicas=world, rank=rank, shuffle=True, seed=recipe.seed)
    steps_per_epoch = -(-len(sampler) // recipe.batch_size)
    total = steps_per_epoch * recipe.epochs
    scheduler = schedule(opt, total, int(recipe.warmup_epochs * steps_per_epoch))
    ema = None
    if recipe.ema > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(recipe.ema), use_buffers=True)
    step, best, log_path, resumed_layout = 0, {"miou": -1.0}, out / "log.jsonl", None
    carried = 0.0, []
    if resume and (out / "last.pt").exists():
        # On the CPU: the random states must be CPU byte tensors; load_state_dict moves the rest to the device.
        state = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
        written = with_later_options(state["recipe"])
        changed = sorted(k for k, v in _comparable(recipe).items() if written.get(k) != v)
        if changed:
            raise ValueError(f"{out / 'last.pt'} was written with another recipe ({', '.join(changed)} differ); "
                             f"resume with the same options or start afresh without --resume")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        step, best, resumed_layout = state["step"], state["best"], state.get("channels_last")
        # stopped inside an epoch: that epoch's seconds and losses so far, so that its log line counts them
        carried = state.get("epoch_seconds", 0.0), list(state.get("epoch_losses", []))
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
    elif rank == 0 and log_path.exists():
        log_path.unlink()
    fmt = torch.contiguous_format
    if resumed_layout is not None:  # the layout the run started with: the same arithmetic, step for step
        fmt = torch.channels_last if resumed_layout else torch.contiguous_format
    elif layout != "auto":
        fmt = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}[layout]
    elif device.type == "cpu":
        if rank == 0:
            with torch.random.fork_rng():  # the probe's dropout must not shift the run's random stream
                probe = torch.rand(recipe.batch_size, 3, *recipe.crop, device=device)
                fmt = faster_memory_format(model, probe, torch.zeros(recipe.batch_size, *recipe.crop, dtype=torch.long))
        if world > 1:  # every process must use rank 0's layout: DDP refuses parameters with other strides
            chosen = torch.tensor([int(fmt == torch.channels_last)])
            dist.broadcast(chosen, 0)
            fmt = torch.channels_last if chosen.item() else torch.contiguous_format
    model.to(memory_format=fmt)
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    amp = device.type == "cuda"  # bf16 autocast: no loss scaling needed
    workers = default_workers() if workers is None else workers

    def checkpoint():
        if rank == 0:
            _save_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(),
                          "scheduler": scheduler.state_dict(), "ema": ema.state_dict() if ema is not None else None,
                          "step": step, "best": best, "torch_rng": torch.get_rng_state(),
                          "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
                          "channels_last": fmt == torch.channels_last,
                          "epoch_seconds": time.time() - t0, "epoch_losses": losses,
                          "recipe": _comparable(recipe)}, out / "last.pt")

    while step < total and (max_steps is None or step < max_steps):
        epoch, done = divmod(step, steps_per_epoch)
        seconds_before, losses = carried if done else (0.0, [])
        carried = 0.0, []
        t0 = time.time() - seconds_before
        model.train()
        sampler.set_epoch(epoch)
        augmented.epoch = epoch
        loader = DataLoader(augmented, batch_size=recipe.batch_size, sampler=SkipSampler(sampler, done * recipe.batch_size),
                            num_workers=workers, drop_last=False,
                            generator=torch.Generator().manual_seed(recipe.seed))  # leaves the global RNG (dropout) alone
        bar = tqdm(loader, desc=f"{recipe.model} epoch {epoch + 1}/{recipe.epochs}", initial=done,
                   total=steps_per_epoch, disable=not progress or rank != 0)
        for images, target in bar:
            x = model.normalize(images.to(device)).contiguous(memory_format=fmt)
            y = target.to(device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                result = ddp(x)
            loss = F.cross_entropy(result["out"].float(), y, weight=weights, ignore_index=labels.ignore_index,
                                   label_smoothing=recipe.label_smoothing)
            if "aux" in result:
                loss = loss + recipe.aux_weight * F.cross_entropy(result["aux"].float(), y, weight=weights,
                                                                  ignore_index=labels.ignore_index,
                                                                  label_smoothing=recipe.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
            step += 1
            if step % recipe.checkpoint_every == 0 and step % steps_per_epoch:
                checkpoint()
            if max_steps is not None and step >= max_steps:
                break
        bar.close()
        if step % steps_per_epoch:  # stopped inside the epoch: keep the position, write no epoch record
            checkpoint()
            break
        if world > 1:  # BN running statistics are per rank: take rank 0's, as DDP does at each forward
            for buffer in model.buffers():
                dist.broadcast(buffer, 0)
        record = {"epoch": epoch + 1, "step": step, "loss": float(np.mean(losses)) if losses else None,
                  "channels_last": fmt == torch.channels_last,
                  "train_seconds": round(time.time() - t0, 1)}
        last = step == total
        if rank == 0:
            final = ema.module if ema is not None else model
            scores = {"miou": float("nan")}  # no validation this epoch
            if val_set is not None and ((epoch + 1) % recipe.eval_every == 0 or last):
                scores = evaluate(final, val_set, device, progress=progress)
                record.update(val_miou=round(scores["miou"], 2), val_pixel_acc=round(scores["pixel_acc"], 2))
                if recipe.select == "best" and scores["miou"] > best["miou"]:
                    best = {**scores, "epoch": epoch + 1}
                    save_safetensors(final, out / "best.safetensors", {"model": recipe.model, "epoch": str(epoch + 1)})
            if recipe.select == "last" and last:
                best = {**scores, "epoch": epoch + 1}
                save_safetensors(final, out / "best.safetensors", {"model": recipe.model, "epoch": str(epoch + 1)})
            record["seconds"] = round(time.time() - t0, 1)
            checkpoint()
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            (out / "recipe.json").write_text(json.dumps({**asdict(recipe), "arch": spec.arch, "best": best}, indent=1))
    if world > 1:
        dist.destroy_process_group()
    log = [json.loads(line) for line in log_path.read_text().split("\n") if line] if log_path.exists() else []
    return TrainResult(best if rank == 0 else {}, model, step, log)
