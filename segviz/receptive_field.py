"""Theoretical receptive fields traced through the real module graph.

Instead of hand-written layer tables, a forward pass runs on an :class:`RFTensor`: a tensor
subclass whose ``__torch_function__`` computes the real result and, beside it, the field
of every output unit along each axis: its size, its jump (effective stride, in input
pixels) and the centre of the first unit's field (Araujo et al., "Computing Receptive
Fields of Convolutional Neural Networks", Distill 2019). Convolutions (any kernel, stride,
padding, dilation), pools, transposed convolutions, interpolation, unpooling, padding and
crops have rules; element-wise ops, sums and concatenations take the union of their inputs'
fields (the paths of skips, ASPP and pyramid pooling). Global or adaptive pooling makes
the field the whole image, which is reported as such rather than as a number.
"""
from __future__ import annotations

import functools
import math
import threading
from dataclasses import dataclass, replace

import torch
from torch import nn

from .evaluate import layout


@dataclass(frozen=True)
class Field:
    """Receptive field along one axis, in input pixels."""

    size: float = 1.0
    jump: float = 1.0
    start: float = 0.0  # centre of the field of output unit 0 (input pixel 0 is at 0)
    whole: bool = False  # the unit sees the whole image (global pooling on the path)

    def centre(self, i: float) -> float:
        return self.start + i * self.jump

    def union(self, other: "Field") -> "Field":
        lo = min(self.start - self.size / 2, other.start - other.size / 2)
        hi = max(self.start + self.size / 2, other.start + other.size / 2)
        # A whole-image branch (image pooling) has no meaningful jump: keep the local branch's.
        jumps = [f.jump for f in (self, other) if not f.whole] or [self.jump, other.jump]
        return Field(hi - lo, min(jumps), (lo + hi) / 2, self.whole or other.whole)


IDENTITY = (Field(), Field())


def _pair(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _window(f: Field, k: int, s: int, p: float, d: int = 1) -> Field:
    k_eff = d * (k - 1) + 1
    return Field(f.size + (k_eff - 1) * f.jump, f.jump * s, f.start + ((k_eff - 1) / 2 - p) * f.jump, f.whole)


def _rf_of(x):
    return x._rf if isinstance(x, RFTensor) else None


def _flatten(args) -> list:
    out = []
    for a in args:
        if isinstance(a, (list, tuple)):
            out.extend(_flatten(a))
        else:
            out.append(a)
    return out


def _arg(args, kwargs, i, name, default=None):
    if name in kwargs:
        return kwargs[name]
    return args[i] if len(args) > i else default


def _spatial(t) -> tuple[int, int] | None:
    return tuple(t.shape[-2:]) if isinstance(t, torch.Tensor) and t.dim() >= 3 else None


def _rule(func, args, kwargs, out):
    """The (h, w) fields of ``out`` given the op and its inputs' fields."""
    name = getattr(func, "__name__", str(func))
    x = args[0] if args else None
    rf = _rf_of(x)
    ins = [a for a in _flatten(list(args) + list(kwargs.values())) if isinstance(a, RFTensor)]
    if rf is None:
        rf = ins[0]._rf if ins else IDENTITY
    if name in ("conv2d", "conv1d"):
        w = _arg(args, kwargs, 1, "weight")
        stride, padding, dilation = (_pair(_arg(args, kwargs, i, n, dv)) for i, n, dv in
                                     ((3, "stride", 1), (4, "padding", 0), (5, "dilation", 1)))
        k = w.shape[-2:]
        if isinstance(padding[0], str):  # "same" / "valid"
            padding = tuple(dilation[a] * (k[a] - 1) / 2 if padding[0] == "same" else 0 for a in range(2))
        return tuple(_window(rf[a], k[a], stride[a], padding[a], dilation[a]) for a in range(2))
    if name == "conv_transpose2d":
        w = _arg(args, kwargs, 1, "weight")
        stride, padding, dilation = (_pair(_arg(args, kwargs, i, n, dv)) for i, n, dv in
                                     ((3, "stride", 1), (4, "padding", 0), (7, "dilation", 1)))
        k = w.shape[-2:]
        fields = []
        for a in range(2):
            k_eff = dilation[a] * (k[a] - 1) + 1
            jump = rf[a].jump / stride[a]
            # Output unit o gathers inputs i with o = i*s - p + t, t < k_eff: about ceil(k_eff/s) of them.
            span = (math.ceil(k_eff / stride[a]) - 1) * rf[a].jump
            start = rf[a].start + (padding[a] - (k_eff - 1) / 2) / stride[a] * rf[a].jump
            fields.append(Field(rf[a].size + span, jump, start, rf[a].whole))
        return tuple(fields)
    if name in ("max_pool2d", "max_pool2d_with_indices", "_max_pool2d", "avg_pool2d", "boolean_dispatch"):
        k = _pair(_arg(args, kwargs, 1, "kernel_size"))
        s = _arg(args, kwargs, 2, "stride") or k
        s = _pair(s) if s != [] else k
        p = _pair(_arg(args, kwargs, 3, "padding", 0))
        d = _pair(_arg(args, kwargs, 4, "dilation", 1)) if "max" in name else (1, 1)
        return tuple(_window(rf[a], k[a], s[a], p[a], d[a]) for a in range(2))
    if name in ("adaptive_avg_pool2d", "adaptive_max_pool2d", "adaptive_max_pool2d_with_indices", "mean") and \
            _spatial(out) != _spatial(x):
        return tuple(replace(f, whole=True) for f in rf)
    if name == "interpolate":
        size_in, size_out = _spatial(x), _spatial(out)
        mode = _arg(args, kwargs, 3, "mode", "nearest")
        align = _arg(args, kwargs, 4, "align_corners", None)
        fields = []
        for a in range(2):
            scale = size_in[a] / size_out[a]
            jump = rf[a].jump * scale
            if align:
                scale_c = (size_in[a] - 1) / max(size_out[a] - 1, 1)
                jump, start = rf[a].jump * scale_c, rf[a].start
            else:
                start = rf[a].start + (0.5 * scale - 0.5) * rf[a].jump
            extra = rf[a].jump if mode in ("bilinear", "linear", "bicubic") else 0
            if mode == "bicubic":
                extra = 3 * rf[a].jump
            fields.append(Field(rf[a].size + extra, jump, start, rf[a].whole))
        return tuple(fields)
    if name == "max_unpool2d":
        size_in, size_out = _spatial(x), _spatial(out)
        return tuple(Field(rf[a].size, rf[a].jump * size_in[a] / size_out[a],
                           rf[a].start - rf[a].jump * (1 - size_in[a] / size_out[a]) / 2, rf[a].whole) for a in range(2))
    if name == "pad":
        pad = _arg(args, kwargs, 1, "pad")
        left, top = pad[0], (pad[2] if len(pad) > 2 else 0)
        return (replace(rf[0], start=rf[0].start - top * rf[0].jump), replace(rf[1], start=rf[1].start - left * rf[1].jump))
    if name == "__getitem__":
        idx = args[1] if isinstance(args[1], tuple) else (args[1],)
        if Ellipsis in idx:
            pos = idx.index(Ellipsis)
            idx = idx[:pos] + (slice(None),) * (x.dim() - len(idx) + 1) + idx[pos + 1:]
        idx = idx + (slice(None),) * (x.dim() - len(idx))
        fields = list(rf)
        for a, sl in enumerate(idx[-2:]):
            if isinstance(sl, slice):
                first, _, step = sl.indices(x.shape[-2 + a])
                fields[a] = Field(rf[a].size, rf[a].jump * step, rf[a].centre(first), rf[a].whole)
        return tuple(fields)
    if name in ("linear", "flatten"):
        return tuple(replace(f, whole=True) for f in rf)
    # Element-wise ops, normalisation, sums, concatenations: the union of the inputs of the output's size.
    size_out = _spatial(out)
    same = [t._rf for t in ins if _spatial(t) == size_out] or [rf]
    fields = same[0]
    for other in same[1:]:
        fields = (fields[0].union(other[0]), fields[1].union(other[1]))
    return fields


class RFTensor(torch.Tensor):
    """A tensor that carries the receptive field of its units through every torch op."""

    _rf: tuple[Field, Field]

    @staticmethod
    def wrap(t: torch.Tensor, rf) -> "RFTensor":
        r = t.as_subclass(RFTensor)
        r._rf = rf
        return r

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **kwargs)
        if getattr(func, "__name__", "") in ("__get__", "__set__", "size", "dim", "numel", "__len__", "__bool__"):
            return out
        results = out if isinstance(out, tuple) else (out,)
        wrapped = []
        for r in results:
            if isinstance(r, torch.Tensor) and r.dim() >= 2:
                r = RFTensor.wrap(r, _rule(func, args, kwargs, r))
            wrapped.append(r)
        return tuple(wrapped) if isinstance(out, tuple) else wrapped[0]


@dataclass
class LayerField:
    name: str
    kind: str
    shape: tuple[int, ...]
    field: tuple[Field, Field]


def trace(model: nn.Module, size=(224, 224), channels: int = 3) -> tuple[list[LayerField], dict[str, tuple[Field, Field]]]:
    """Per-layer fields (every leaf module, in execution order) and the fields of the outputs."""
    layers: list[LayerField] = []
    hooks = []

    def hook(module, inputs, output, name=""):
        out = output[0] if isinstance(output, tuple) else output
        if isinstance(out, RFTensor):
            layers.append(LayerField(name, type(module).__name__, tuple(out.shape), out._rf))

    for name, module in model.named_modules():
        if not list(module.children()):
            hooks.append(module.register_forward_hook(lambda m, i, o, name=name: hook(m, i, o, name)))
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters(), torch.empty(0)).device  # "meta": shapes and fields without arithmetic
        x = RFTensor.wrap(torch.zeros(1, channels, *size, device=device), IDENTITY)
        with torch.no_grad():
            out = model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    outputs = out if isinstance(out, dict) else {"out": out}
    outputs = {k: v._rf for k, v in outputs.items() if isinstance(v, RFTensor)}
    if isinstance(out, (list, tuple)):
        outputs = {f"level{i + 1}": v._rf for i, v in enumerate(out) if isinstance(v, RFTensor)}
    return layers, outputs


def final_field(model: nn.Module, size=(224, 224)) -> tuple[Field, Field]:
    return trace(model, size)[1]["out"]


def describe(field: tuple[Field, Field]) -> str:
    """The field in whole pixels, height x width (fractions come from resampling layers' rules)."""
    h, w = field
    if h.whole or w.whole:
        return "the whole image (global pooling on the path)"
    return f"{round(h.size)} x {round(w.size)} px"


def beyond_image(field: tuple[Field, Field], size: tuple[int, int]) -> str:
    """How much larger than the image (``size`` (H, W)) the field is, or "" when it fits."""
    h, w = field
    if h.whole or w.whole:
        return ""
    ratios = (h.size / size[0], w.size / size[1])
    if max(ratios) <= 1:
        return ""
    return f"{ratios[0]:.1f}x the image's height, {ratios[1]:.1f}x its width"


# --------------------------------------------------------------------------- effective field
def effective_field(model: nn.Module, image, pixel: tuple[int, int], class_index: int | None = None,
                    samples: int = 0, seed: int = 0):
    """Effective receptive field (Luo et al. 2016, arXiv 1701.04128) of one output pixel.

    The gradient of the logit at ``pixel`` (y, x) -- of its predicted class, or
    ``class_index`` -- with respect to the input, |grad| summed over channels, normalised
    to a maximum of 1. With ``samples`` > 0 the input is replaced by that many random
    images (one batch, one backward pass) and the maps summed: the image-independent version.
    Returns (map (H, W), class).
    """
    import hashlib

    import numpy as np

    from .gradients import input_gradient

    if image is None:
        raise ValueError("effective_field needs an image (its size, and its content unless samples > 0)")
    device = next(model.parameters()).device
    y, x = pixel
    h, w = image.shape[:2]
    if not (0 <= y < h and 0 <= x < w):
        raise ValueError(f"pixel ({y}, {x}) is outside the {w}x{h} image")
    n = samples if samples > 0 else 1

    def make_input():
        if samples > 0:
            g = torch.Generator().manual_seed(seed)
            raw = torch.cat([torch.rand(1, 3, h, w, generator=g) for _ in range(samples)])
        else:
            raw = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)[None].float().div(255)
        return model.normalize(raw.to(device)).contiguous(memory_format=layout(model))

    chosen = []

    def select(logits):
        if class_index is None:  # each input's own predicted class at the pixel
            classes = logits[:, :, y, x].argmax(1)
        elif 0 <= class_index < logits.shape[1]:
            classes = torch.full((n,), class_index, device=logits.device)
        else:
            raise ValueError(f"class {class_index} does not exist; the model has {logits.shape[1]} classes")
        chosen.append(classes)
        # The inputs of a batch are independent (eval mode): one backward gives each one's gradient.
        return logits[torch.arange(n), classes, y, x].sum()

    key = ("random", samples, seed, h, w) if samples > 0 else \
        ("image", hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=16).hexdigest(), h, w)
    grad = input_gradient(model, key, make_input, select)
    total = grad.abs().sum(1).sum(0)
    erf = total / total.max().clamp_min(1e-12)
    out_class = class_index if class_index is not None or samples > 0 else int(chosen[0][0])
    return erf.detach().cpu().numpy(), out_class


def field_box(field: tuple[Field, Field], pixel: tuple[int, int]):
    """The theoretical field of output ``pixel`` as (y0, x0, y1, x1), not clipped (it may reach past the
    image), or None when it is the whole image. It is centred where the trace puts it, which need not be the
    pixel: a stride-s map upsampled bilinearly (``align_corners=False``) reads output pixel i from feature
    position (i + 0.5) / s - 0.5, whose unit sits at input pixel i - (s - 1) / 2 (FCN's transposed conv of
    kernel 2s, padding s/2 reads the same units); the ERF's centroid moves the same way."""
    h, w = field
    if h.whole or w.whole:
        return None
    y, x = h.centre(pixel[0]), w.centre(pixel[1])
    return (y - h.size / 2, x - w.size / 2, y + h.size / 2, x + w.size / 2)


def erf_extent(erf, threshold: float = 0.05) -> tuple[int, int]:
    """Height and width of the box holding every pixel whose ERF exceeds ``threshold`` of the peak."""
    import numpy as np

    ys, xs = np.nonzero(erf >= threshold)
    if ys.size == 0:
        return 0, 0
    return int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)


# --------------------------------------------------------------------------- the Receptive field tab's grid
def traceable(name: str) -> nn.Module:
    """The network of a record or a registry key, for tracing: a registry network is built on the meta
    device (no weights, no arithmetic: fields depend on the graph only); a foreign one is loaded."""
    from . import registry

    key = registry_key(name)
    if key is None:
        from .compare import load

        return load(name)
    with torch.device("meta"):
        return registry.build(key, num_classes=11)  # the number of classes does not change the field


def registry_key(name: str) -> str | None:
    """The registry key behind ``name`` (a registry key or a record name), or None for a foreign network."""
    from . import records, registry

    if name in registry.names():
        return name
    r = records.get(name)
    return r.network if r.trained_here else None


_trace_lock = threading.Lock()


@functools.lru_cache(maxsize=64)
def traced(name: str, size: tuple[int, int]):
    """(model, layers, outputs): :func:`traceable` and its :func:`trace`, once per model and image size.
    One trace at a time: a foreign network is the loaded one, and two traces' hooks on it would each
    record the other's layers."""
    with _trace_lock:
        model = traceable(name)
        return (model, *trace(model, size))


def theoretical_field(name: str, size: tuple[int, int]):
    return traced(name, size)[2]["out"]


@dataclass(frozen=True)
class DepthPoint:
    depth: int  # convolutions and pools so far, in execution order
    size: float  # the larger side of the field of this layer's units, in input pixels
    kind: str  # "conv", "strided" / "dilated" (a convolution with stride / dilation > 1), "pool",
    # "global" (the field is now the whole image), "output" (the model's logits, all branches joined)
    layer: str


def field_by_depth(name: str, size: tuple[int, int]) -> list[DepthPoint]:
    """The theoretical field of every convolution and pooling layer of a model in execution order, then of
    its output: what strides, pooling, dilation, ASPP and global pooling do to it. Parallel branches (ASPP,
    pyramid pooling) appear one after the other."""
    model, layers, outputs = traced(name, size)
    points = []
    for layer in layers:
        if "Conv" not in layer.kind and "Pool" not in layer.kind:
            continue
        h, w = layer.field
        module = model.get_submodule(layer.name)
        if h.whole or w.whole:
            kind = "global"
        elif "Pool" in layer.kind:
            kind = "pool"
        elif "Transpose" in layer.kind:  # upsampling: it widens the field by a few units, it does not stride
            kind = "conv"
        elif max(_pair(getattr(module, "dilation", 1))) > 1:
            kind = "dilated"
        else:
            kind = "strided" if max(_pair(getattr(module, "stride", 1))) > 1 else "conv"
        points.append(DepthPoint(len(points) + 1, max(h.size, w.size), kind, layer.name))
    h, w = outputs["out"]
    points.append(DepthPoint(len(points) + 1, max(h.size, w.size), "global" if h.whole or w.whole else "output", "out"))
    return points


def erf_grid(image, pixel, names, class_name: str | None = None, random_inputs: int = 0, progress=None):
    """Per model: the ERF heatmap of ``pixel`` with the theoretical field drawn as a box, and a
    table row (model, class, theoretical field, ERF extent at 5% of its peak)."""
    from .compare import resolve
    from .preprocess import prepare_image, scale_pixel

    prepared = prepare_image(image)
    img = prepared.image
    size = img.shape[:2]
    # No click yet (a new image, or an API call): the centre.
    pixel = (size[0] // 2, size[1] // 2) if pixel is None else scale_pixel(pixel, prepared.original_size, size)
    if not names:
        raise ValueError("select at least one model")
    todo = resolve(list(names))
    classes = list(todo[0].labels.classes)
    if class_name not in (None, "", "predicted") and class_name not in classes:
        raise ValueError(f"unknown class {class_name!r} for {todo[0].dataset.name}; choose one of: {', '.join(classes)}")
    class_index = None if class_name in (None, "", "predicted") else classes.index(class_name)
    tiles, rows = [], []
    for i, r in enumerate(todo):
        if progress:
            progress(i / len(todo), f"gradients of {r.short}")
        tile, row = _erf_tile(r, img, pixel, class_index, random_inputs)
        tiles.append((tile, f"{r.short} · {row[1]}"))
        rows.append(row)
    return tiles, rows, pixel


_ERF_CACHE = None


def _erf_tile(r, img, pixel, class_index, random_inputs):
    """One model's tile (heatmap, field box, colour bar) and table row, cached on everything they depend on:
    showing the grid again, or with one more model, computes only what is new."""
    global _ERF_CACHE
    from . import viz
    from .compare import ByteCache, image_key, load

    if _ERF_CACHE is None:
        _ERF_CACHE = ByteCache(64 << 20, lambda v: v[0].nbytes)
    key = (image_key(img), r.name, tuple(pixel), class_index, random_inputs)
    hit = _ERF_CACHE.get(key)
    if hit is not None:
        return hit
    size = img.shape[:2]
    erf, c = effective_field(load(r.name), img, pixel, class_index, samples=random_inputs)
    field = theoretical_field(r.name, size)
    ey, ex = erf_extent(erf)
    larger = beyond_image(field, size)
    tile = viz.draw_box(viz.heatmap_overlay(img, erf), field_box(field, pixel), pixel,
                        f"field {describe(field)}: {larger}" if larger else None)
    cls = r.labels.classes[c] if c is not None else "predicted (random inputs)"
    _ERF_CACHE[key] = out = (viz.erf_colour_bar(tile), [r.short, cls, describe(field) + (f" ({larger})" if larger else ""),
                                                       f"{ey} x {ex} px"])
    return out


HEADERS = ["model", "class", "theoretical field", "ERF extent (>5% of peak)"]
