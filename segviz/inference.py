"""Load trained models (cached, on CUDA when present) and predict label maps."""
from __future__ import annotations

import functools
import os

import numpy as np
import torch

from . import records, registry
from .evaluate import predict_logits
from .weights import MANIFEST, WeightsError, load_safetensors


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@functools.lru_cache(maxsize=32)
def load_model(name: str, weights: str | None = None, device: str | None = None,
               manifest: str = str(MANIFEST)) -> torch.nn.Module:
    """A trained model in eval mode on ``device`` (default: CUDA when present). ``name`` is a record
    (``fcn8s_efficientnet_lite0.camvid``, or a registry key with one record); its weights are
    sha256-checked. With ``weights`` (a safetensors file), ``name`` may be any registry key.
    Cached per arguments."""
    if weights is None:
        model = records.get(name, manifest).load()
    else:
        network = name.rsplit(".", 1)[0] if name not in registry.names() and "." in name else name
        spec = registry.get_spec(network)
        if not os.path.exists(weights):
            raise FileNotFoundError(f"weights file {weights} does not exist")
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(weights, "pt") as f:
                meta = f.metadata() or {}
        except (SafetensorError, OSError) as e:
            raise WeightsError(f"{weights} is not a readable safetensors file ({e})") from None
        model = load_safetensors(registry.build(spec.name, num_classes=int(meta.get("num_classes", 11))), weights)
    dev = torch.device(device) if device else default_device()
    return model.to(dev, memory_format=torch.channels_last).eval()


def predict(model: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    """Softmax probabilities (C, H, W) float32 of one RGB uint8 image."""
    device = next(model.parameters()).device
    return predict_logits(model, image, device).softmax(1)[0].cpu().numpy()
