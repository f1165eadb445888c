"""Evaluate a model on a labelled split at full resolution."""
from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from .metrics import confusion_matrix, scores


def to_tensor(image: np.ndarray, device="cpu") -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.array(image, copy=True)).to(device).permute(2, 0, 1)[None].float().div_(255)


@torch.inference_mode()
def predict_logits(model, image: np.ndarray, device="cpu") -> torch.Tensor:
    """Logits (1, C, H, W) of one RGB image at its own size."""
    x = model.normalize(to_tensor(image, device)).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.float16, enabled=torch.device(device).type == "cuda"):
        return model(x)["out"].float()


def evaluate(model, dataset, device="cpu", progress: bool = True) -> dict:
    """Per-class IoU, mIoU, pixel and class accuracy over ``dataset`` (full resolution)."""
    model.eval()
    n = dataset.labels.num_classes
    cm = np.zeros((n, n), np.int64)
    for image, target in tqdm(dataset, desc="eval", disable=not progress, leave=False):
        pred = predict_logits(model, image, device).argmax(1)[0].cpu().numpy()
        cm += confusion_matrix(pred, target, n)
    result = scores(cm, dataset.labels.classes)
    result["images"] = len(dataset)
    return result
