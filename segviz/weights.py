"""Weights on disk: safetensors files, the bundled manifest, sha256 checks."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from . import PROJECT_ROOT

if TYPE_CHECKING:  # reading the manifest and hashing files does not import torch
    import torch


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_safetensors(model: torch.nn.Module, path: str | os.PathLike, metadata: dict | None = None,
                     dtype: torch.dtype | None = None) -> None:
    """Write the state dict atomically (temp file + rename); float tensors cast to ``dtype`` if given."""
    from safetensors.torch import save_file

    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        state[k] = v.contiguous()
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    meta[CHECKSUM_KEY] = tensors_sha256(state)
    save_file(state, str(tmp), metadata=meta)
    os.replace(tmp, path)


CHECKSUM_KEY = "tensors_sha256"  # in the safetensors metadata: what load_safetensors checks


def tensors_sha256(state: dict) -> str:
    """sha256 over the tensors' names, dtypes, shapes and bytes, in name order (a flipped byte changes it)."""
    import torch

    h = hashlib.sha256()
    for k in sorted(state):
        v = state[k].contiguous()
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}|".encode())
        h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()


def same_contents(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two safetensors files hold the same tensors and metadata. safetensors writes its metadata in no
    fixed order, so two saves of the same weights can differ in their bytes (and sha256)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    metadata = [safe_open(str(p), "pt").metadata() for p in (a, b)]
    return metadata[0] == metadata[1] and tensors_sha256(load_file(str(a))) == tensors_sha256(load_file(str(b)))


def load_safetensors(model: torch.nn.Module, path: str | os.PathLike, check: str = "quiet") -> torch.nn.Module:
    """Load with strict=True, casting stored float16 back to the model's dtype. A file that is not
    safetensors, is cut short, does not fit the model, or whose tensors differ from the checksum
    recorded in it (files segviz writes carry one) is a one-line :class:`WeightsError`; a file
    without a checksum is loaded, with a warning when ``check="warn"`` (a user's file)."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            recorded = (f.metadata() or {}).get(CHECKSUM_KEY)
    except (SafetensorError, OSError, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise WeightsError(f"{path} is not a readable safetensors file ({first})") from None
    if recorded is not None and tensors_sha256(state) != recorded:
        raise WeightsError(f"{path} was modified after it was saved (its tensors no longer match the sha256 "
                           f"recorded in the file)")
    if recorded is None and check == "warn":
        import warnings

        warnings.warn(f"{Path(path).name} records no checksum, so its integrity was not checked "
                      f"(files written by segviz record one)", stacklevel=2)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shapes:
        what = [f"{len(v)} {label} (first: {v[0]})" for v, label in
                ((missing, "missing tensors"), (unexpected, "unexpected tensors"), (shapes, "shape mismatches")) if v]
        raise WeightsError(f"{path} does not fit {type(model).__name__}: {'; '.join(what)}; "
                           f"is it the weights of another model?")
    state = {k: v.to(own[k].dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    return model


# --------------------------------------------------------------------------- bundled weights
WEIGHTS_DIR = PROJECT_ROOT / "weights"
MANIFEST = WEIGHTS_DIR / "manifest.json"


class WeightsError(RuntimeError):
    """A missing, tampered or unknown weights file (the message is one line)."""


def read_manifest(path: str | os.PathLike = MANIFEST) -> dict:
    import json

    path = Path(path)
    if not path.exists():
        return {}
    try:
        models = json.loads(path.read_text())["models"]
        if not isinstance(models, dict) or not all(isinstance(e, dict) and {"model", "file", "sha256"} <= e.keys()
                                                   for e in models.values()):
            raise ValueError("entries need model, file and sha256")
    except (ValueError, KeyError, TypeError) as e:
        raise WeightsError(f"{path} is not a valid weights manifest ({e}); restore it with "
                           f"`git checkout -- {path.name}`") from None
    return models


def bundled_entry(name: str, manifest: str | os.PathLike = MANIFEST) -> dict:
    models = read_manifest(manifest)
    if name not in models:
        trained = ", ".join(models) or "none yet"
        raise WeightsError(f"no bundled weights {name!r}; trained models: {trained}")
    return models[name]


def verified_path(name: str, manifest: str | os.PathLike = MANIFEST) -> Path:
    """The bundled file of ``name`` after its sha256 matched the manifest."""
    entry = bundled_entry(name, manifest)
    path = Path(manifest).parent / entry["file"]
    if not path.exists():
        raise WeightsError(f"{path} is missing: restore it with `git checkout -- weights/` "
                           f"or retrain with `python -m segviz train --model {entry['model']}`")
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise WeightsError(f"{path} is corrupt or was modified (sha256 {digest[:12]}... but the manifest says "
                           f"{entry['sha256'][:12]}...): restore it with `git checkout -- weights/`")
    return path


# --------------------------------------------------------------------------- downloads
def download(url: str, dest: str | os.PathLike, sha256: str | None = None, timeout: float = 20.0,
             progress: bool = True) -> Path:
    """Fetch ``url`` to ``dest`` with a progress bar: resumes a ``.part`` file with an HTTP
    Range request, checks ``sha256`` when given, then renames atomically. Offline it fails
    fast with a one-line error."""
    import http.client
    import urllib.error
    import urllib.request

    from tqdm import tqdm

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if have and response.status != 206:  # server ignored the range: start over
                have = 0
            total = response.headers.get("Content-Length")
            total = int(total) + have if total is not None else None
            with open(part, "ab" if have else "wb") as f, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                                                 desc=dest.name, disable=not progress, leave=False) as bar:
                try:
                    for chunk in iter(lambda: response.read(1 << 16), b""):
                        f.write(chunk)
                        bar.update(len(chunk))
                except http.client.IncompleteRead:
                    pass  # the connection closed early: told below, the .part kept for the next try
                got = f.tell()
        if total is not None and got < total:
            raise WeightsError(f"the download of {url} stopped at {got} of {total} bytes; run the same command "
                               f"again to resume it from {part.name}")
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the .part is already complete
            pass
        else:
            raise WeightsError(f"download of {url} failed: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise WeightsError(f"cannot download {url} ({reason}); are you offline? "
                           f"Put the file at {dest} by hand instead") from None
    if sha256 is not None:
        digest = sha256_file(part)
        if digest != sha256:
            part.unlink()
            raise WeightsError(f"{url} arrived with sha256 {digest[:12]}..., expected {sha256[:12]}...: deleted it")
    os.replace(part, dest)
    return dest
