"""A TFLite graph rebuilt as a PyTorch module, weights dequantised: Coral's DeepLab v3.

``deeplabv3_mnv2_pascal_quant.tflite`` (google-coral/test_data, Apache-2.0) is DeepLab v3
(arXiv 1706.05587) on MobileNetV2 (arXiv 1801.04381), trained on PASCAL VOC 2012, uint8.
Its graph, as the flatbuffer lists it (72 operators):

- MobileNetV2 at output stride 16: a 3x3 stride-2 conv (32 ch), 17 inverted-residual blocks
  (1x1 expand, 3x3 depthwise, 1x1 project, ADD on the residual ones); the last stage's
  depthwise convs are dilated 2 instead of strided. Output: (33, 33, 320) for 513x513.
- A light ASPP: ``aspp0`` (1x1 conv to 256) and ``image_pooling`` (global AVERAGE_POOL_2D,
  1x1 conv to 256, RESIZE_BILINEAR back), CONCATENATION, ``concat_projection`` (1x1, 256).
  There are no atrous 3x3 branches in this mobile configuration.
- ``logits/semantic``: 1x1 conv to 21 classes, RESIZE_BILINEAR to the input size, ARG_MAX.

The port is generic over the ops that graph uses (CONV_2D, DEPTHWISE_CONV_2D, ADD,
AVERAGE_POOL_2D, RESIZE_BILINEAR, CONCATENATION, QUANTIZE, ARG_MAX): every weight is
dequantised as ``scale * (q - zero_point)``; the arithmetic is float, and by default each
activation is rounded to its tensor's uint8 grid as the integer interpreter stores it
(``emulate_int8``; the folded-BN weights are large, so float activations alone drift by
tens of quantisation steps within a few layers). TF "SAME" padding is reproduced exactly
(asymmetric when it must be) and so is TF's resize. The module returns
``{"out": logits}`` before the ARG_MAX, so the CRF, the receptive field and CUDA work on it.
Resize targets that were fixed at 513 follow the actual input, so any image size runs.
The same code loads the half-width ``deeplabv3_mnv2_dm05_pascal_quant.tflite``.
"""
from __future__ import annotations

import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..layers import SegmentationModel

# NHWC axis -> NCHW dim
_AXIS = {0: 0, 1: 2, 2: 3, 3: 1, -1: 1}
_ACT = {0: None, 1: F.relu, 2: lambda x: x.clamp(-1, 1), 3: F.relu6}


def _options(op, cls):
    table = op.BuiltinOptions()
    o = cls()
    o.Init(table.Bytes, table.Pos)
    return o


def _fake_quant(y: torch.Tensor, scale: float, zero_point: int, qmin: int, qmax: int) -> torch.Tensor:
    """Round to the tensor's uint8 grid, as the integer interpreter stores it; the gradient
    passes straight through (so effective receptive fields still work)."""
    v = y / scale
    q = (torch.sign(v) * torch.floor(v.abs() + 0.5) + zero_point).clamp(qmin, qmax)  # TFLite rounds half away from 0
    return y + ((q - zero_point) * scale - y).detach()


class _Input(nn.Module):
    """Holds the quantisation of the uint8 input so that ``normalize`` reproduces it exactly."""

    channels = (3,)

    def __init__(self, scale: float, zero_point: int):
        super().__init__()
        self.mean = (zero_point / 255.0,) * 3
        self.std = (1.0 / (255.0 * scale),) * 3


class TFLiteGraph(SegmentationModel):
    def __init__(self, path: str | os.PathLike, emulate_int8: bool = True):
        try:
            import tflite
        except ImportError as e:
            raise RuntimeError("reading .tflite files needs: pip install tflite") from e
        with open(path, "rb") as f:
            buf = f.read()
        model = tflite.Model.GetRootAsModel(buf, 0)
        g = model.Subgraphs(0)
        names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}

        def tensor_array(i: int) -> np.ndarray | None:
            t = g.Tensors(i)
            data = model.Buffers(t.Buffer()).DataAsNumpy()
            if isinstance(data, int) or data is None or len(data) == 0:
                return None
            dtype = {tflite.TensorType.UINT8: np.uint8, tflite.TensorType.INT8: np.int8,
                     tflite.TensorType.INT32: np.int32, tflite.TensorType.FLOAT32: np.float32}[t.Type()]
            a = np.frombuffer(data.tobytes(), dtype=dtype).reshape(t.ShapeAsNumpy())
            q = t.Quantization()
            if q is None or not q.ScaleLength() or dtype == np.float32:
                return a  # float weights, or plain integers such as a resize's target size
            scale, zp = q.ScaleAsNumpy(), q.ZeroPointAsNumpy()
            shape = [1] * a.ndim
            if scale.size > 1:  # per-channel quantisation
                shape[q.QuantizedDimension()] = -1
            return ((a.astype(np.float32) - zp.reshape(shape)) * scale.reshape(shape)).astype(np.float32)

        inp = g.Tensors(g.InputsAsNumpy()[0])
        iq = inp.Quantization()
        super().__init__(_Input(float(iq.ScaleAsNumpy()[0]), int(iq.ZeroPointAsNumpy()[0])))
        self.input_id = int(g.InputsAsNumpy()[0])
        self.input_hw = tuple(int(v) for v in inp.ShapeAsNumpy()[1:3])
        self.shapes = {i: tuple(int(v) for v in g.Tensors(i).ShapeAsNumpy()) for i in range(g.TensorsLength())}
        self.tensor_names = {i: g.Tensors(i).Name().decode() for i in range(g.TensorsLength())}
        self.emulate_int8 = emulate_int8
        self.ops: list[dict] = []
        self.params = nn.ParameterDict()
        for i in range(g.OperatorsLength()):
            op = g.Operators(i)
            code = model.OperatorCodes(op.OpcodeIndex())
            kind = names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]
            ins = [int(j) for j in op.InputsAsNumpy()]
            out = int(op.OutputsAsNumpy()[0])
            spec = {"kind": kind, "inputs": ins, "output": out, "name": self.tensor_names[out]}
            oq = g.Tensors(out).Quantization()
            if oq is not None and oq.ScaleLength():
                qmin, qmax = (0, 255) if g.Tensors(out).Type() == tflite.TensorType.UINT8 else (-128, 127)
                spec["quant"] = (float(oq.ScaleAsNumpy()[0]), int(oq.ZeroPointAsNumpy()[0]), qmin, qmax)
            if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
                is_dw = kind == "DEPTHWISE_CONV_2D"
                o = _options(op, tflite.DepthwiseConv2DOptions if is_dw else tflite.Conv2DOptions)
                # TFLite keeps OHWI (conv) and 1HWO (depthwise); PyTorch wants OIHW.
                w = tensor_array(ins[1]).transpose(3, 0, 1, 2) if is_dw else tensor_array(ins[1]).transpose(0, 3, 1, 2)
                b = tensor_array(ins[2]) if len(ins) > 2 and ins[2] >= 0 else None
                self.params[f"w{i}"] = nn.Parameter(torch.from_numpy(np.ascontiguousarray(w)), requires_grad=False)
                if b is not None:
                    self.params[f"b{i}"] = nn.Parameter(torch.from_numpy(np.ascontiguousarray(b)), requires_grad=False)
                spec.update(stride=(o.StrideH(), o.StrideW()), dilation=(o.DilationHFactor(), o.DilationWFactor()),
                            same=o.Padding() == tflite.Padding.SAME, act=o.FusedActivationFunction(),
                            groups=w.shape[0] if is_dw else 1)
                if is_dw and o.DepthMultiplier() != 1:
                    spec["groups"] = w.shape[0] // o.DepthMultiplier()
            elif kind == "ADD":
                spec["act"] = _options(op, tflite.AddOptions).FusedActivationFunction()
            elif kind == "AVERAGE_POOL_2D":
                o = _options(op, tflite.Pool2DOptions)
                spec.update(filter=(o.FilterHeight(), o.FilterWidth()), stride=(o.StrideH(), o.StrideW()),
                            same=o.Padding() == tflite.Padding.SAME, act=o.FusedActivationFunction())
            elif kind == "RESIZE_BILINEAR":
                o = _options(op, tflite.ResizeBilinearOptions)
                spec.update(size=tuple(int(v) for v in tensor_array(ins[1])), align_corners=o.AlignCorners(),
                            half_pixel=o.HalfPixelCenters())
            elif kind == "CONCATENATION":
                o = _options(op, tflite.ConcatenationOptions)
                spec.update(axis=o.Axis(), act=o.FusedActivationFunction())
            elif kind == "TILE":  # image pooling broadcast back over the map, as a resize would
                spec["size"] = self.shapes[out][1:3]
            elif kind not in ("QUANTIZE", "DEQUANTIZE", "ARG_MAX"):
                raise NotImplementedError(f"{path}: operator {kind} is not supported by the port")
            self.ops.append(spec)
        self.num_classes = self.shapes[self.ops[-1]["inputs"][0]][-1] if self.ops[-1]["kind"] == "ARG_MAX" else None

    @staticmethod
    def _same_pad(x, k, stride, dilation):
        pads = []
        for a in (1, 0):  # F.pad wants (left, right, top, bottom)
            size = x.shape[2 + a]
            out = math.ceil(size / stride[a])
            total = max((out - 1) * stride[a] + (k[a] - 1) * dilation[a] + 1 - size, 0)
            pads += [total // 2, total - total // 2]
        return F.pad(x, pads)

    @staticmethod
    def _resize(x, size, align_corners, half_pixel):
        if align_corners:
            return F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        if half_pixel:
            return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        # TF1's legacy resize: src = dst * in / out, no half-pixel offset.
        for a, n_out in ((2, size[0]), (3, size[1])):
            n_in = x.shape[a]
            src = torch.arange(n_out, device=x.device, dtype=torch.float32) * (n_in / n_out)
            i0 = src.floor().long().clamp(max=n_in - 1)
            i1 = (i0 + 1).clamp(max=n_in - 1)
            w = (src - i0.float()).view([-1 if d == a else 1 for d in range(4)])
            x = x.index_select(a, i0) * (1 - w) + x.index_select(a, i1) * w
        return x

    def _target_size(self, recorded: tuple[int, int], env: dict) -> tuple[int, int]:
        """Sizes fixed in the file follow the input: use the runtime size of the first tensor
        that had the recorded size (the input itself for 513x513)."""
        for tid, value in env.items():
            if self.shapes[tid][1:3] == recorded:
                return tuple(value.shape[-2:])
        return recorded

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        env = {self.input_id: x}
        logits = None
        for i, op in enumerate(self.ops):
            kind, ins = op["kind"], op["inputs"]
            a = env[ins[0]]
            if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
                w = self.params[f"w{i}"]
                if op["same"]:
                    a = self._same_pad(a, w.shape[-2:], op["stride"], op["dilation"])
                y = F.conv2d(a, w, self.params[f"b{i}"] if f"b{i}" in self.params else None, op["stride"],
                             dilation=op["dilation"], groups=op["groups"])
            elif kind == "ADD":
                y = a + env[ins[1]]
            elif kind == "AVERAGE_POOL_2D":
                if op["filter"] == self.shapes[ins[0]][1:3]:
                    y = F.adaptive_avg_pool2d(a, 1)  # the whole feature map: image-level pooling
                else:
                    y = F.avg_pool2d(self._same_pad(a, op["filter"], op["stride"], (1, 1)) if op["same"] else a,
                                     op["filter"], op["stride"], count_include_pad=False)
            elif kind == "RESIZE_BILINEAR":
                y = self._resize(a, self._target_size(op["size"], env), op["align_corners"], op["half_pixel"])
            elif kind == "TILE":
                y = a.expand(-1, -1, *self._target_size(op["size"], env)).contiguous()
            elif kind == "CONCATENATION":
                y = torch.cat([env[j] for j in ins], dim=_AXIS[op["axis"]])
            elif kind in ("QUANTIZE", "DEQUANTIZE"):
                y = a
            elif kind == "ARG_MAX":
                logits = a
                continue
            act = _ACT.get(op.get("act", 0))
            y = act(y) if act is not None else y
            if self.emulate_int8 and "quant" in op:
                y = _fake_quant(y, *op["quant"])
            env[op["output"]] = y
        if logits is None:
            logits = env[self.ops[-1]["output"]]
        return {"out": logits}  # (N, classes, H, W), before the arg-max


class AlignedPort(torch.nn.Module):
    """The TFLite port as DeepLab is meant to run: on an image padded (bottom and right, with the
    input's zero point, i.e. mid-grey) to 16k+1 pixels per side, the logits cropped back.

    DeepLab v3 was trained on 513x513 crops (16k+1): at such sizes TensorFlow's "SAME" padding is
    symmetric and its corner-aligned resizes put every stride-16 feature exactly over its pixels. At
    other sizes both go lopsided and the masks shift by up to 8 px (measured by the mirror test in
    tests/test_voc.py). ``TFLiteGraph`` alone is the TFLite-exact mode, as the interpreter computes
    it at whatever size it is given."""

    def __init__(self, graph: torch.nn.Module, multiple: int = 16):
        super().__init__()
        self.graph, self.multiple = graph, multiple
        self.normalize = graph.normalize

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h, w = x.shape[-2:]
        m = self.multiple
        H, W = m * -(-(h - 1) // m) + 1, m * -(-(w - 1) // m) + 1
        padded = F.pad(x, (0, W - w, 0, H - h))  # 0 after normalize is the zero point: mid-grey
        return {"out": self.graph(padded)["out"][..., :h, :w]}


class Normalized(torch.nn.Module):
    """torchvision's segmentation models with segviz's ``normalize`` (ImageNet statistics)."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1), persistent=False)

    def normalize(self, images):
        return (images - self.mean) / self.std

    def forward(self, x):
        return {"out": self.net(x)["out"]}
