"""Weights on disk: safetensors files, the bundled manifest, sha256 checks."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_safetensors(model: torch.nn.Module, path: str | os.PathLike, metadata: dict | None = None,
                     dtype: torch.dtype | None = None) -> None:
    """Write the state dict atomically (temp file + rename); float tensors cast to ``dtype`` if given."""
    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        state[k] = v.contiguous()
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={k: str(v) for k, v in (metadata or {}).items()})
    os.replace(tmp, path)


def load_safetensors(model: torch.nn.Module, path: str | os.PathLike) -> torch.nn.Module:
    """Load with strict=True, casting stored float16 back to the model's dtype."""
    state = load_file(str(path))
    own = model.state_dict()
    state = {k: v.to(own[k].dtype) if k in own else v for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    return model


# --------------------------------------------------------------------------- bundled weights
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
MANIFEST = WEIGHTS_DIR / "manifest.json"


class WeightsError(RuntimeError):
    """A missing, tampered or unknown weights file (the message is one line)."""


def read_manifest(path: str | os.PathLike = MANIFEST) -> dict:
    import json

    path = Path(path)
    if not path.exists():
        return {}
    return json.loads(path.read_text())["models"]


def bundled_entry(name: str, manifest: str | os.PathLike = MANIFEST) -> dict:
    models = read_manifest(manifest)
    if name not in models:
        trained = ", ".join(models) or "none yet"
        raise WeightsError(f"no bundled weights for {name!r}; trained models: {trained}")
    return models[name]


def verified_path(name: str, manifest: str | os.PathLike = MANIFEST) -> Path:
    """The bundled file of ``name`` after its sha256 matched the manifest."""
    entry = bundled_entry(name, manifest)
    path = Path(manifest).parent / entry["file"]
    if not path.exists():
        raise WeightsError(f"{path} is missing: restore it with `git checkout -- weights/` "
                           f"or retrain with `python -m segviz train --model {name}`")
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise WeightsError(f"{path} is corrupt or was modified (sha256 {digest[:12]}... but the manifest says "
                           f"{entry['sha256'][:12]}...): restore it with `git checkout -- weights/`")
    return path
