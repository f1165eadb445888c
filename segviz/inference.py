"""Load trained models (cached, on CUDA when present) and predict label maps."""
from __future__ import annotations

import functools
import os

import numpy as np
import torch

from . import registry
from .evaluate import predict_logits
from .weights import MANIFEST, bundled_entry, load_safetensors, verified_path


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@functools.lru_cache(maxsize=32)
def load_model(name: str, weights: str | None = None, device: str | None = None,
               manifest: str = str(MANIFEST)) -> torch.nn.Module:
    """A trained model in eval mode: the bundled weights of ``name`` (sha256-checked), or a
    safetensors file ``weights`` of the same configuration. Cached per arguments."""
    spec = registry.get_spec(name)
    if weights is None:
        num_classes = bundled_entry(name, manifest)["num_classes"]
        path = verified_path(name, manifest)
    else:
        path = weights
        if not os.path.exists(path):
            raise FileNotFoundError(f"weights file {path} does not exist")
        from safetensors import safe_open

        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
        num_classes = int(meta.get("num_classes", 11))
    model = registry.build(spec.name, num_classes=num_classes)
    load_safetensors(model, path)
    dev = torch.device(device) if device else default_device()
    return model.to(dev, memory_format=torch.channels_last).eval()


def predict(model: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    """Softmax probabilities (C, H, W) float32 of one RGB uint8 image."""
    device = next(model.parameters()).device
    return predict_logits(model, image, device).softmax(1)[0].cpu().numpy()
