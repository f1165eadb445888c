"""PASCAL VOC 2012 (21 classes) and its records: real models trained on VOC by others.

- ``deeplabv3_mnv2.voc`` / ``deeplabv3_mnv2_dm05.voc``: Coral's DeepLab v3 MobileNetV2
  TFLite models, ported to PyTorch (segviz.models.tflite_port). Offline: found in
  ``../shared/models/coral``, in ``weights/``, or in the user cache
  (``python -m segviz weights download deeplabv3_mnv2.voc`` puts them there).
- ``<torchvision builder>.voc`` (``deeplabv3_resnet50.voc``, ``lraspp_mobilenet_v3_large.voc``, ...):
  torchvision's segmentation models with their COCO_WITH_VOC_LABELS weights, downloaded on
  demand into torch's usual cache; offline they say so in one line.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .. import SHARED_DIR
from ..records import Dataset, Record
from ..weights import WEIGHTS_DIR, WeightsError, download, sha256_file
from .palettes import VOC

DATASET = Dataset("voc", "PASCAL VOC (21 classes): Coral's DeepLab v3 ports and torchvision's models", VOC,
                  "PASCAL VOC")

CORAL_URL = "https://raw.githubusercontent.com/google-coral/test_data/master/"
SHARED_CORAL = SHARED_DIR / "models" / "coral"
BUNDLED_DIR = WEIGHTS_DIR


def user_cache() -> Path:
    return Path(os.environ.get("SEGVIZ_CACHE", Path.home() / ".cache" / "segviz"))


@dataclass(frozen=True)
class VOCModel:
    name: str  # the network's name; the record is "<name>.voc"
    title: str
    arch: str  # registry-style architecture family, for the UI
    file: str  # file name at its public home
    sha256: str  # full sha256 (Coral) or the 8-hex prefix torchvision puts in its file names
    url: str
    source: str  # "coral" or "torchvision"
    builder: str = ""  # torchvision builder name
    note: str = ""


CORAL = [
    VOCModel("deeplabv3_mnv2", "DeepLab v3 MobileNetV2 (Coral, int8, aligned)", "deeplabv3",
             "deeplabv3_mnv2_pascal_quant.tflite",
             "350af47fd346ea6d74b58833a351f583ba860e9806ec5bd292ff8d8f1f249398",
             CORAL_URL + "deeplabv3_mnv2_pascal_quant.tflite", "coral"),
    VOCModel("deeplabv3_mnv2_dm05", "DeepLab v3 MobileNetV2 x0.5 (Coral, int8, aligned)", "deeplabv3",
             "deeplabv3_mnv2_dm05_pascal_quant.tflite",
             "0470d2a782aa54eeeb99d32e7b6b3fb7722905c7c4f5d26bd957ec861366d48b",
             CORAL_URL + "deeplabv3_mnv2_dm05_pascal_quant.tflite", "coral"),
]


# torchvision's COCO_WITH_VOC_LABELS_V1 weights: (builder, weights enum, arch, title, file, COCO-val VOC-labels
# mIoU), copied from torchvision's metadata so that listing records does not import torchvision (seconds);
# tests/test_voc.py checks every entry against the installed torchvision.
TORCHVISION = (
    ("fcn_resnet50", "FCN_ResNet50_Weights", "fcn8s", "FCN ResNet-50", "fcn_resnet50_coco-1167a1af.pth", 60.5),
    ("fcn_resnet101", "FCN_ResNet101_Weights", "fcn8s", "FCN ResNet-101", "fcn_resnet101_coco-7ecb50ca.pth", 63.7),
    ("deeplabv3_resnet50", "DeepLabV3_ResNet50_Weights", "deeplabv3", "DeepLab v3 ResNet-50",
     "deeplabv3_resnet50_coco-cd0a2569.pth", 66.4),
    ("deeplabv3_resnet101", "DeepLabV3_ResNet101_Weights", "deeplabv3", "DeepLab v3 ResNet-101",
     "deeplabv3_resnet101_coco-586e9e4e.pth", 67.4),
    ("deeplabv3_mobilenet_v3_large", "DeepLabV3_MobileNet_V3_Large_Weights", "deeplabv3",
     "DeepLab v3 MobileNetV3-Large", "deeplabv3_mobilenet_v3_large-fc3c493d.pth", 60.3),
    ("lraspp_mobilenet_v3_large", "LRASPP_MobileNet_V3_Large_Weights", "lraspp", "LR-ASPP MobileNetV3-Large",
     "lraspp_mobilenet_v3_large-d234d4ea.pth", 57.9),
)
TORCHVISION_URL = "https://download.pytorch.org/models/"


def _torchvision_models() -> list[VOCModel]:
    return [VOCModel(builder, f"{title} (torchvision)", arch, file, file.rsplit("-", 1)[1][:-4], TORCHVISION_URL + file,
                     "torchvision", builder, f"COCO-val VOC-labels mIoU {miou}")
            for builder, _, arch, title, file, miou in TORCHVISION]


def catalogue() -> list[VOCModel]:
    return CORAL + _torchvision_models()


def get(name: str) -> VOCModel:
    """A VOC model by record name (``deeplabv3_mnv2.voc``) or network name (``deeplabv3_mnv2``)."""
    models = {m.name: m for m in catalogue()}
    key = name[:-len(".voc")] if name.endswith(".voc") else name
    if key not in models:
        raise WeightsError(f"unknown VOC model {name!r}; choose one of: {', '.join(m + '.voc' for m in models)}")
    return models[key]


def records() -> list[Record]:
    import functools

    return [Record(f"{m.name}.voc", m.name, DATASET, m.title, m.arch, m.source, m.file, m.sha256,
                   functools.partial(load, m), functools.partial(missing_reason, m), url=m.url, note=m.note)
            for m in catalogue()]


def torch_cache_dir() -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def locations(m: VOCModel) -> list[Path]:
    if m.source == "coral":
        return [SHARED_CORAL / m.file, BUNDLED_DIR / m.file, user_cache() / m.file]
    return [torch_cache_dir() / m.file]


def find(m: VOCModel) -> Path | None:
    return next((p for p in locations(m) if p.exists()), None)


def missing_reason(m: VOCModel) -> str | None:
    """None when the model can run; otherwise one line saying how to get it."""
    if find(m) is None:
        return f"needs a download: python -m segviz weights download {m.name}.voc"
    return None


def fetch(m: VOCModel, url: str | None = None, dest_dir: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """Download ``m`` (from ``url`` if given: a mirror) with progress and a hash check. A Coral model is
    saved under the name :func:`find` looks for, whatever the mirror calls it."""
    import re

    url = url or m.url
    dest = Path(dest_dir) if dest_dir else (user_cache() if m.source == "coral" else torch_cache_dir())
    if m.source == "coral":
        return download(url, dest / m.file, sha256=m.sha256, progress=progress)
    name = url.rsplit("/", 1)[-1]
    if not re.fullmatch(r".+-[0-9a-f]{8,}\.pth", name):  # a mirror that drops the hash from the name
        name = m.file
    # torchvision names its files <name>-<first 8 hex of sha256>.pth: torch.hub checks what arrives against that
    # (as torch.hub.load_state_dict_from_url(check_hash=True) does) and writes through a temporary file
    import urllib.error

    import torch

    dest.mkdir(parents=True, exist_ok=True)
    expected = name.rsplit("-", 1)[1].split(".")[0]
    try:
        torch.hub.download_url_to_file(url, str(dest / name), hash_prefix=expected, progress=progress)
    except RuntimeError as e:
        raise WeightsError(f"{url} arrived with the wrong sha256 (its name says {expected}...): deleted it") from e
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        raise WeightsError(f"cannot download {url} ({getattr(e, 'reason', e)}); are you offline? "
                           f"Put the file at {dest / name} by hand instead") from None
    return dest / name


def load(m: VOCModel, path: str | os.PathLike | None = None, exact: bool = False):
    """The network of ``m`` with its weights. Coral's ports run aligned (:class:`AlignedPort`) unless
    ``exact``: then exactly as the TFLite interpreter computes them at the size they are given."""
    path = Path(path) if path else find(m)
    if path is None or not path.exists():
        raise WeightsError(f"{m.name}.voc is not on this machine; get it with: "
                           f"python -m segviz weights download {m.name}.voc")
    if m.source == "coral":
        if sha256_file(path) != m.sha256:
            raise WeightsError(f"{path} is not the published {m.file} (sha256 differs); delete it and download again")
        from ..models.tflite_port import AlignedPort, TFLiteGraph

        graph = TFLiteGraph(path)
        return graph if exact else AlignedPort(graph)
    import torch
    import torchvision

    from ..models.tflite_port import Normalized

    builder = getattr(torchvision.models.segmentation, m.builder)
    extra = {} if m.builder.startswith("lraspp") else {"aux_loss": True}  # the COCO checkpoints carry the aux head
    net = builder(weights=None, weights_backbone=None, num_classes=21, **extra)
    state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    return Normalized(net)
