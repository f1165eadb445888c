"""One record per trained model: an architecture with weights trained on one dataset.

A record is named ``<network>.<dataset>`` (``fcn8s_mobilenet_edgetpu.camvid``,
``deeplabv3_mnv2.voc``) and holds everything segviz knows about that model: the network
(a registry key, or a foreign network's name), the label set, where its weights live and
their sha256, what we measured and what the papers published. Everything that lists,
loads, benchmarks or describes trained models reads these records.

Where they come from:

- the models trained here: ``weights/manifest.json`` (the on-disk truth for bundled weights,
  written by ``python -m segviz weights bundle``), one entry per record name;
- foreign models: each dataset module in :mod:`segviz.data` may define ``records()``
  (``segviz.data.voc``: Coral's TFLite DeepLab v3 ports and torchvision's VOC models).

A dataset module also defines ``DATASET`` (a :class:`Dataset`): its label set and the
figures papers published on it. Adding a dataset is one such module plus its records.
"""
from __future__ import annotations

import functools
import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # listing records does not import torch: loading a model does
    from torch import nn

from .data.palettes import LabelSet
from .registry import UnknownModelError


@dataclass(frozen=True)
class Dataset:
    name: str  # "camvid", "voc": the suffix of record names
    title: str  # what the UI shows
    labels: LabelSet
    short: str = ""  # the model-set choice in the UI
    published: dict = field(default_factory=dict)  # arch -> published test mIoU on this dataset (text)


@dataclass(frozen=True)
class Record:
    name: str  # "<network>.<dataset>"
    network: str  # registry key (trained here) or the foreign network's name
    dataset: Dataset
    title: str  # short UI title, e.g. "FCN-8s"
    arch: str  # architecture family (registry arch for ours: fcn8s, deeplabv3, ...)
    source: str  # "bundled" (trained here), "coral", "torchvision"
    file: str  # weights file name
    sha256: str | None  # full sha256 of the file (for torchvision: the 8-hex prefix in its name)
    load_fn: Callable[[], nn.Module] = field(repr=False, compare=False)
    missing_fn: Callable[[], str | None] = field(repr=False, compare=False)
    url: str | None = None  # public home, for downloads
    metrics: dict = field(default_factory=dict, compare=False)  # what we measured (bundled: the manifest entry)
    note: str = ""
    short: str = ""  # overlay and chart labels ("GCN"); default: the title without its parenthesis
    order: int = 0  # bundled: the architecture's place in the review's story (registry ModelSpec.order)

    def __post_init__(self):
        from .registry import short_title

        object.__setattr__(self, "short", self.short or short_title(self.title))

    @property
    def labels(self) -> LabelSet:
        return self.dataset.labels

    @property
    def trained_here(self) -> bool:
        return self.source == "bundled"

    @property
    def spec(self):
        """The registry spec of the network, or None for a foreign network."""
        from . import registry

        return registry.get_spec(self.network) if self.trained_here else None

    @property
    def val_miou(self) -> str:
        """The val mIoU as the tables show it: blank when not measured, flagged when the model was
        trained on val's own frames (trainval, noseq:SEQ), where it measures nothing."""
        if "val_miou" not in self.metrics:
            return ""
        return "trained on val" if self.metrics.get("val_trained_on") else f"{self.metrics['val_miou']:.2f}"

    @property
    def input_scale(self) -> float:
        """How many times the model enlarges an image before its forward, its logits brought back to the image's
        size: the manifest's ``input_scale``, chosen on the held-out sequence (1 for foreign models and where the
        manifest sets none)."""
        return float(self.metrics.get("input_scale", 1))

    def scale_for(self, height: int, width: int, scale: float | None = None) -> float:
        """:attr:`input_scale` (or ``scale``, where the user chose one) for an image of this size: an enlargement
        stops where the longer side reaches the working-size cap (:data:`segviz.preprocess.MAX_SIDE`), and an
        image already past it is not shrunk."""
        from .preprocess import MAX_SIDE

        s = self.input_scale if scale is None else scale
        return max(1.0, min(s, MAX_SIDE / max(height, width))) if s > 1 else s

    def missing(self) -> str | None:
        """None when the weights are on this machine; otherwise one line saying how to get them."""
        return self.missing_fn()

    def load(self) -> nn.Module:
        """The network with its weights (sha256-checked), in train mode on the CPU."""
        return self.load_fn()


def datasets() -> dict[str, Dataset]:
    return {d.name: d for d in (m.DATASET for m in _data_modules()) if d is not None}


def _data_modules():
    from . import data

    for info in pkgutil.iter_modules(data.__path__):
        module = importlib.import_module(f"{data.__name__}.{info.name}")
        if hasattr(module, "DATASET"):
            yield module


def _bundled(manifest: Path) -> list[Record]:
    from . import registry
    from .weights import read_manifest

    sets = datasets()
    out = []
    for name, entry in read_manifest(manifest).items():
        dataset = sets.get(entry.get("dataset"))
        if dataset is None:
            from .weights import WeightsError

            raise WeightsError(f"{manifest}: {name} names an unknown dataset {entry.get('dataset')!r}")
        # the spec's names as the manifest copied them (registry.SPEC_FIELDS): no model module is imported
        spec = entry if all(k in entry for k in registry.SPEC_FIELDS) else registry.spec_fields(
            registry.get_spec(entry["model"]))
        out.append(Record(name, entry["model"], dataset, spec["title"], spec["arch"], "bundled", entry["file"],
                          entry["sha256"], functools.partial(_load_bundled, name, str(manifest)),
                          functools.partial(_missing_bundled, name, str(manifest)), metrics=entry,
                          short=spec["short"], order=spec["order"]))
    return out


def _load_bundled(name: str, manifest: str) -> nn.Module:
    from . import registry
    from .weights import bundled_entry, load_safetensors, verified_path

    entry = bundled_entry(name, manifest)
    model = registry.build(entry["model"], num_classes=entry["num_classes"])
    return load_safetensors(model, verified_path(name, manifest))


def _missing_bundled(name: str, manifest: str) -> str | None:
    from .weights import bundled_entry

    path = Path(manifest).parent / bundled_entry(name, manifest)["file"]
    return None if path.exists() else f"{path} is missing (git checkout -- weights/)"


def all_records(manifest: str | Path | None = None) -> list[Record]:
    """Every record: bundled ones (in the story order of the review), then each dataset module's."""
    from .weights import MANIFEST

    bundled = sorted(_bundled(Path(manifest or MANIFEST)), key=lambda r: (r.order, r.name))  # the review's order
    foreign = [r for m in _data_modules() if hasattr(m, "records") for r in m.records()]
    return bundled + foreign


def records(dataset: str | None = None, manifest: str | Path | None = None) -> list[Record]:
    """The records of one dataset (all when ``dataset`` is None)."""
    if dataset is not None and dataset not in datasets():
        raise ValueError(f"unknown dataset {dataset!r}; choose one of: {', '.join(datasets())}")
    return [r for r in all_records(manifest) if dataset is None or r.dataset.name == dataset]


def get(name: str, manifest: str | Path | None = None) -> Record:
    """The record called ``name``; a registry key with exactly one record (``fcn8s_mobilenet_edgetpu``)
    stands for that record."""
    every = all_records(manifest)
    by_name = {r.name: r for r in every}
    if name in by_name:
        return by_name[name]
    matches = [r for r in every if r.network == name]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise UnknownModelError(f"{name!r} has weights for several datasets; name one of: "
                                f"{', '.join(r.name for r in matches)}")
    raise UnknownModelError(f"no trained model {name!r}; choose one of: {', '.join(by_name)}")


def resolve(names: list[str]) -> list[Record]:
    """The records of ``names`` (record names, or registry keys with one record); they must share a
    label set, and models whose weights are not on this machine are an error naming what to run."""
    chosen = [get(n) for n in names]
    sets = sorted({r.dataset.name for r in chosen})
    if len(sets) > 1:
        raise ValueError(f"models of different label sets ({', '.join(sets)}) cannot share one comparison; "
                         f"pick models of one set")
    for r in chosen:
        why = r.missing()
        if why:
            raise ValueError(f"{r.name}: {why}")
    return chosen
