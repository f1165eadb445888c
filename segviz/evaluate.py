"""Evaluate a model on a labelled split at full resolution."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .metrics import confusion_matrix, scores


def to_tensor(image: np.ndarray, device="cpu") -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.array(image, copy=True)).to(device).permute(2, 0, 1)[None].float().div_(255)


def layout(model: torch.nn.Module) -> torch.memory_format:
    """The memory format a module's convolution weights are in (its inputs should match)."""
    for p in model.parameters():
        if p.dim() == 4:
            return tensor_layout(p)
    return torch.contiguous_format


def tensor_layout(t: torch.Tensor) -> torch.memory_format:
    """channels_last when a 4-d tensor is laid out so (and not also contiguous), else contiguous."""
    channels_last = t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


@torch.inference_mode()
def predict_logits(model, image: np.ndarray, device="cpu", scale: float = 1.0) -> torch.Tensor:
    """Logits (1, C, H, W) of one RGB image at its own size (the model run on it resized by ``scale``,
    :func:`logits_of`); ``model`` is a module or a :class:`segviz.backends.Runner`."""
    return logits_of(model, model.normalize(to_tensor(image, device)), device, scale)


def labels_of(logits: torch.Tensor) -> np.ndarray:
    """The arg-max class map (H, W) of logits (1, C, H, W), the first maximum on ties. On a CPU torch's
    ``max`` over the leading dim of (C, H, W) takes 3.5 ms at 11x360x480, NumPy's ``argmax`` 7 ms and
    torch's ``argmax`` 20-27 ms (same process, AMD EPYC)."""
    return logits[0].max(0).indices.cpu().numpy()


class ModelInput:
    """One image as the models take it: made a float tensor once, and normalised once per normalisation
    (every model trained here shares one), however many models then run on it."""

    def __init__(self, image: np.ndarray):
        self.image = image
        self._tensors: dict = {}

    def for_model(self, model, device="cpu") -> torch.Tensor:
        norm = model.normalize
        owner = getattr(norm, "__self__", None)
        stats = tuple(tuple(getattr(owner, k).flatten().tolist()) for k in ("mean", "std") if hasattr(owner, k))
        key = (getattr(norm, "__func__", norm), stats if len(stats) == 2 else id(owner), str(device))
        if key not in self._tensors:
            raw = self._tensors.setdefault(("raw", str(device)), to_tensor(self.image, device))
            with torch.inference_mode():
                self._tensors[key] = norm(raw)
        return self._tensors[key]


@torch.inference_mode()
def logits_of(model, x: torch.Tensor, device="cpu", scale: float = 1.0) -> torch.Tensor:
    """Logits (1, C, H, W) of a normalised input ``x`` (module or backend runner, as :func:`predict_logits`);
    with ``scale``, the model runs on ``x`` resized by that factor (bilinear) and its logits are brought back to
    ``x``'s size (bilinear): a record's ``input_scale`` (:attr:`segviz.records.Record.input_scale`)."""
    if scale != 1:
        out = logits_of(model, F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False,
                                             recompute_scale_factor=False), device)
        return F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
    if not isinstance(model, torch.nn.Module):
        return model(x)["out"].float()
    with torch.autocast("cuda", dtype=torch.float16, enabled=torch.device(device).type == "cuda"):
        return model(x.contiguous(memory_format=layout(model)))["out"].float()


# DeepLab v3's test-time inputs (its "MS + Flip"): the image at several scales and mirrored, the class
# probabilities averaged at full resolution.
TTA_SCALES = (0.75, 1.0, 1.25)


@torch.inference_mode()
def predict_probs_tta(model, image: np.ndarray, scales=TTA_SCALES, flip: bool = True, device="cpu") -> torch.Tensor:
    """Class probabilities (1, C, H, W) of one RGB image: the mean of the softmax over the image rescaled
    by each of ``scales`` (bilinear) and, with ``flip``, mirrored left-right too, each brought back to
    the image's size (and unmirrored) before averaging."""
    x = model.normalize(to_tensor(image, device))
    total = None
    for scale in scales:
        for mirrored in (False, True) if flip else (False,):
            out = logits_of(model, x.flip(-1) if mirrored else x, device, scale)
            out = out.flip(-1) if mirrored else out
            total = out.softmax(1) if total is None else total.add_(out.softmax(1))
    return total / (len(scales) * (2 if flip else 1))


def evaluate(model, dataset, device="cpu", progress: bool = True, tta: bool = False, input_scale: float = 1.0) -> dict:
    """Per-class IoU, mIoU, pixel and class accuracy over ``dataset`` (scored at full resolution) of one forward
    on each frame resized by ``input_scale`` (bilinear), its logits brought back to the frame's size
    (:func:`logits_of`); with ``tta``, of the predictions averaged over :data:`TTA_SCALES` times ``input_scale``
    and their mirror images."""
    scales = tuple(s * input_scale for s in TTA_SCALES)
    model.eval()
    n = dataset.labels.num_classes
    cm = np.zeros((n, n), np.int64)
    for image, target in tqdm(dataset, desc="eval", disable=not progress, leave=False):
        if tta:
            out = predict_probs_tta(model, image, scales, device=device)
        else:
            out = predict_logits(model, image, device, input_scale)
        cm += confusion_matrix(labels_of(out), target, n)
    result = scores(cm, dataset.labels.classes)
    result["images"] = len(dataset)
    if tta:
        result["tta"] = {"scales": list(scales), "flip": True}
    if input_scale != 1:
        result["input_scale"] = input_scale
    return result


# --------------------------------------------------------------------------- the CRF's effect
# Bilateral kernel width (px), colour width and weight; pydensecrf's defaults are the grid's largest values.
CRF_GRID = {"bilateral_sxy": (10.0, 30.0, 80.0), "bilateral_srgb": (3.0, 5.0, 13.0), "bilateral_compat": (3.0, 5.0, 10.0)}


def crf_study(model, dataset, device="cpu", tune_every: int = 4, progress: bool = True, grid: dict | None = None,
              input_scale: float = 1.0) -> dict:
    """mIoU on ``dataset`` (the model run at ``input_scale``, as :func:`evaluate`) without the CRF and with its
    default parameters; then a grid search
    (``grid``, default :data:`CRF_GRID`) on every ``tune_every``-th frame of the first half, and the
    tuned parameters scored on the second half. Each CamVid split here is one sequence or a few:
    halves, not alternate frames, so that near-duplicate neighbours do not leak between tuning and
    testing."""
    import itertools

    from .crf import CRFParams, dense_crf

    grid = CRF_GRID if grid is None else grid
    n = dataset.labels.num_classes
    half = len(dataset) // 2
    model.eval()
    probs = []
    for image, _ in tqdm(dataset, desc="softmax", disable=not progress, leave=False):
        probs.append(predict_logits(model, image, device, input_scale).softmax(1)[0].cpu().numpy())

    def cms(indices, params):
        out = {}
        for i in tqdm(indices, desc="crf", disable=not progress, leave=False):
            image, target = dataset[i]
            p = probs[i] if params is None else dense_crf(probs[i], image, params)
            out[i] = confusion_matrix(p.argmax(0), target, n)
        return out

    def miou(cm_by_image, indices):
        return scores(sum(cm_by_image[i] for i in indices), dataset.labels.classes)["miou"]

    everything, second = range(len(dataset)), range(half, len(dataset))
    none, default = cms(everything, None), cms(everything, CRFParams())
    tune = range(0, half, tune_every)
    best, best_params = -1.0, CRFParams()
    for values in tqdm(list(itertools.product(*grid.values())), desc="grid", disable=not progress, leave=False):
        params = CRFParams(**dict(zip(grid, values)))
        m = miou(cms(tune, params), tune)
        if m > best:
            best, best_params = m, params
    tuned = cms(second, best_params)
    return {
        "images": len(dataset), **({"input_scale": input_scale} if input_scale != 1 else {}),
        "miou": round(miou(none, everything), 2),
        "miou_crf_default": round(miou(default, everything), 2),
        "second_half_miou": round(miou(none, second), 2),
        "second_half_miou_crf_default": round(miou(default, second), 2),
        "second_half_miou_crf_tuned": round(miou(tuned, second), 2),
        "tuned_params": best_params.as_dict(),
        "tuned_on": f"every {f'{tune_every}th ' if tune_every > 1 else ''}frame of frames 0-{half - 1}",
    }
