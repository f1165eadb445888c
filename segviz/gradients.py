"""Input gradients of a trained network, fast on CPU: the backward pass of the effective receptive field.

In eval mode a network is piecewise linear in its input, and the effective field of one output pixel is
one vector-Jacobian product. :func:`gradient_twin` makes a copy of a network with the same forward and
a cheaper backward:

- batch norm is folded into the convolution before it (in eval mode it is an affine map per channel);
- a stride-1 depthwise convolution (the dilated ones of the output-stride-8 models among them) takes its
  input gradient as the same convolution of the output gradient with the kernel flipped, which is exact
  for zero padding: torch's generic backward for these kernels costs 10-30x their forward on CPU;
- ReLU and ReLU6 keep a one-byte mask for the backward instead of their float input;
- no weight needs a gradient.

:func:`input_gradient` keeps the forward graph of the latest input of each network (bounded in bytes),
so a new output pixel on the same image costs one backward pass, not a forward and a backward.
"""
from __future__ import annotations

import copy
import threading
import weakref
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .evaluate import tensor_layout

KEPT_GRAPH_BYTES = 1 << 30  # forward graphs kept for new pixels on the same input, all networks together


class _Conv(torch.autograd.Function):
    """A convolution that keeps only its weight for the backward (torch keeps the input too, for a weight
    gradient the twin never needs) and takes the input gradient the cheapest exact way."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        ctx.save_for_backward(weight)
        ctx.conf = x.shape, stride, padding, dilation, groups
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        shape, stride, padding, dilation, groups = ctx.conf
        if groups > 1 and groups == shape[1] == weight.shape[0] and stride == (1, 1):
            # Depthwise, stride 1: the adjoint of a correlation is the correlation with the flipped kernel,
            # padded so that the output keeps the input's size (d (k - 1) - p on each side).
            back = tuple(d * (k - 1) - p for d, k, p in zip(dilation, weight.shape[-2:], padding))
            x_grad = F.conv2d(grad, weight.flip(-1, -2), None, 1, back, dilation, groups)
        else:
            like = torch.empty(shape, dtype=grad.dtype, device=grad.device, memory_format=tensor_layout(grad))  # its shape
            x_grad = torch.ops.aten.convolution_backward(grad, like, weight, None, stride, padding, dilation, False,
                                                         (0, 0), groups, (True, False, False))[0]
        return x_grad, None, None, None, None, None, None


class _Conv2d(nn.Conv2d):
    def forward(self, x):
        return _Conv.apply(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class _Clamp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lo, hi):
        passing = x > lo if hi is None else (x > lo) & (x < hi)
        ctx.save_for_backward(passing.view(torch.uint8))  # multiplying by uint8 is ~8x faster than by bool
        return x.clamp(lo, hi)

    @staticmethod
    def backward(ctx, grad):
        (passing,) = ctx.saved_tensors
        return grad * passing.to(grad.dtype), None, None


class _ReLU(nn.ReLU):
    def forward(self, x):
        return _Clamp.apply(x, 0.0, None)


class _ReLU6(nn.ReLU6):
    def forward(self, x):
        return _Clamp.apply(x, 0.0, 6.0)


def _fold_batch_norm(model: nn.Module) -> None:
    """Fold every BatchNorm2d that directly follows a Conv2d in a Sequential into that convolution."""
    for seq in model.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = seq._modules[a], seq._modules[b]
            if type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and bn.track_running_stats:
                scale = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(bn.running_var + bn.eps)
                shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
                bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
                weight = conv.weight * scale.reshape(-1, 1, 1, 1)
                conv.weight = nn.Parameter(weight.contiguous(memory_format=tensor_layout(conv.weight)))
                conv.bias = nn.Parameter((bias - bn.running_mean) * scale + shift)
                seq._modules[b] = nn.Identity()


_TWINS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_twins_lock = threading.Lock()


def gradient_twin(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with the same forward and the cheaper input gradient described in
    the module's docstring. Made once per model, and again when its weights or statistics have changed
    since (an optimiser step, a load); the model itself is not changed."""
    state = _state_version(model)
    with _twins_lock:
        twin = _TWINS.get(model)
        if twin is None or twin.source_version != state:
            with torch.no_grad():
                twin = copy.deepcopy(model).eval().requires_grad_(False)
                _fold_batch_norm(twin)
            for m in twin.modules():
                if type(m) is nn.Conv2d and m.padding_mode == "zeros" and not isinstance(m.padding, str):
                    m.__class__ = _Conv2d
                elif type(m) is nn.ReLU:
                    m.__class__ = _ReLU
                elif type(m) is nn.ReLU6:
                    m.__class__ = _ReLU6
            twin.requires_grad_(False)
            twin.twin_lock, twin.source_version = threading.Lock(), state
            _TWINS[model] = twin
        return twin


def _state_version(model: nn.Module) -> tuple:
    """Changes whenever a parameter or buffer of ``model`` is replaced or changed in place."""
    return tuple((id(t), t._version) for t in (*model.parameters(), *model.buffers()))


class _Graph:
    """A forward pass kept for more backward passes: its input, its logits and the bytes it holds."""

    def __init__(self, twin: nn.Module, inp: torch.Tensor):
        held, seen = 0, set()

        def pack(t):
            nonlocal held
            if t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                held += t.numel() * t.element_size()
            return t

        self.inp = inp.detach().requires_grad_(True)
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            self.logits = twin(self.inp)["out"]
        self.nbytes = held + self.logits.numel() * self.logits.element_size()


_GRAPHS: OrderedDict = OrderedDict()  # (twin, key) -> _Graph, least recently used first
_graphs_lock = threading.Lock()


def _kept_graph(twin: nn.Module, key, make_input) -> _Graph:
    with _graphs_lock:
        graph = _GRAPHS.get((twin, key))
        if graph is not None:
            _GRAPHS.move_to_end((twin, key))
            return graph
    graph = _Graph(twin, make_input())
    with _graphs_lock:
        for k in [k for k in _GRAPHS if k[0] is twin]:  # one input per network: the latest
            del _GRAPHS[k]
        _GRAPHS[(twin, key)] = graph
        while sum(g.nbytes for g in _GRAPHS.values()) > KEPT_GRAPH_BYTES and len(_GRAPHS) > 1:
            _GRAPHS.popitem(last=False)
    return graph


def input_gradient(model: nn.Module, key, make_input, select) -> torch.Tensor:
    """The gradient of ``select(logits)`` (a scalar) with respect to the input ``make_input()`` (called only
    when no forward graph is kept for ``key``, a hashable naming the input). Runs on
    :func:`gradient_twin`; the graph is kept for the next call with the same key."""
    twin = gradient_twin(model)
    with twin.twin_lock:  # one backward at a time through a kept graph
        graph = _kept_graph(twin, key, make_input)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(select(graph.logits), graph.inp, retain_graph=True)
    return grad


def forget_graphs() -> None:
    """Drop every kept forward graph (their memory is freed)."""
    with _graphs_lock:
        _GRAPHS.clear()
