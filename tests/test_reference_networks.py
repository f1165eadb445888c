"""Our modules are the published networks: torchvision's weights load and agree, ImageNet weights classify."""
import pytest
import torch
import torchvision

from segviz.registry import build


def test_torchvision_deeplabv3_resnet50_loads_strictly_and_gives_the_same_logits():
    torch.manual_seed(0)
    theirs = torchvision.models.segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21,
                                                                aux_loss=True).eval()
    ours = build("deeplabv3_resnet50", num_classes=21).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)  # same module names: no key mapping needed
    x = torch.randn(1, 3, 97, 129)
    with torch.no_grad():
        a, b = theirs(x), ours(x)
    assert torch.allclose(a["out"], b["out"], atol=1e-5, rtol=0)
    # In train mode both return the auxiliary head too (ours only then); same seed, same dropout masks.
    ours.train(), theirs.train()
    xa = torch.randn(2, 3, 65, 65)
    with torch.no_grad():
        torch.manual_seed(1)
        ta = theirs(xa)
        torch.manual_seed(1)
        oa = ours(xa)
    assert torch.allclose(ta["aux"], oa["aux"], atol=1e-5, rtol=0)
    assert torch.allclose(ta["out"], oa["out"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", ["lite0", "lite2"])
def test_efficientnet_lite_imagenet_weights_see_a_cat(variant):
    skimage = pytest.importorskip("skimage")
    from segviz.backbones.efficientnet_lite import efficientnet_lite

    model = efficientnet_lite(variant, weights="imagenet", with_classifier=True).eval()
    size = {"lite0": 224, "lite2": 260}[variant]  # each checkpoint's ImageNet resolution
    img = torch.from_numpy(skimage.data.chelsea()).permute(2, 0, 1)[None].float() / 255
    img = torch.nn.functional.interpolate(img, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    mean, std = torch.tensor(model.mean).view(1, 3, 1, 1), torch.tensor(model.std).view(1, 3, 1, 1)
    with torch.no_grad():
        probs = model.classify((img - mean) / std).softmax(1)[0]
    top5 = probs.topk(5).indices.tolist()
    cats = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert top5[0] in cats, top5
    assert probs[list(cats)].sum() > 0.8


# Parameter counts of EfficientNet-Lite0 and -Lite2 with their ImageNet classifiers, as the TF model garden's
# README for EfficientNet-Lite lists them (4.7M and 6.1M).
@pytest.mark.parametrize("variant,params,channels", [("lite0", 4_652_008, (16, 24, 40, 112, 320)),
                                                     ("lite2", 6_092_072, (16, 24, 48, 120, 352))])
def test_efficientnet_lite_key_mapping_covers_every_tensor(variant, params, channels):
    from segviz.backbones.efficientnet_lite import efficientnet_lite, imagenet_state_dict

    state = imagenet_state_dict(variant)
    model = efficientnet_lite(variant, with_classifier=True)
    assert set(state) == set(model.state_dict())
    counted = sum(v.numel() for k, v in state.items() if "num_batches" not in k and "running" not in k)
    assert counted == params and sum(p.numel() for p in model.parameters()) == counted
    assert model.channels == channels
    assert round(counted / 1e6, 1) == {"lite0": 4.7, "lite2": 6.1}[variant]  # the TF README's figures


def test_dilated_efficientnet_keeps_the_imagenet_features_at_the_centre():
    """Swapping strides for dilation must not change what the first levels compute."""
    from segviz.backbones.efficientnet_lite import efficientnet_lite0

    a = efficientnet_lite0(output_stride=32).eval()
    b = efficientnet_lite0(output_stride=8).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        fa, fb = a(x), b(x)
    for level in range(3):  # strides 2, 4, 8 are untouched at output stride 8
        assert torch.allclose(fa[level], fb[level])
    assert fb[4].shape[-1] == 8 and fa[4].shape[-1] == 2
    convs = [blk.depthwise[0] for blk in b.blocks]
    assert [c.dilation[0] for c in convs] == [1] * 5 + [1, 2, 2, 2, 2, 2, 2, 4, 4, 4, 4]


# ------------------------------------------------------------------ MobileNet-EdgeTPU, Coral's Cityscapes DeepLab
def _cityscapes_file():
    from conftest import CORAL

    from segviz.backbones.mobilenet_edgetpu import FILE

    if not (CORAL / FILE).exists():
        pytest.skip("the Coral models are not in ../shared")
    return CORAL / FILE


def _deeplab_on(backbone, rest, x):
    """The file's ASPP (image pooling first, then the 1x1 branch, as DeepLab concatenates them) and logits."""
    F = torch.nn.functional
    (w_aspp0, b_aspp0), (w_pool, b_pool), (w_proj, b_proj), (w_logits, b_logits) = rest
    f = backbone.head(backbone(x)[-1])
    a = F.relu(F.conv2d(f, w_aspp0, b_aspp0))
    pool = F.relu(F.conv2d(f.mean((2, 3), keepdim=True), w_pool, b_pool)).expand_as(a)
    y = F.conv2d(F.relu(F.conv2d(torch.cat([pool, a], 1), w_proj, b_proj)), w_logits, b_logits)
    return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=True)


def test_mobilenet_edgetpu_is_the_backbone_of_corals_cityscapes_deeplab():
    """With the file's ASPP and logits on top, the backbone computes the TFLite graph's float arithmetic,
    and on the published reference image matches the published mask as well as the int8 interpreter."""
    import numpy as np
    from PIL import Image

    from segviz.backbones.mobilenet_edgetpu import MobileNetEdgeTPU, load_cityscapes
    from segviz.models.tflite_port import TFLiteGraph

    path = _cityscapes_file()
    backbone = MobileNetEdgeTPU(output_stride=16, with_head=True).eval()  # as the file runs it
    rest = load_cityscapes(backbone, path)
    assert [tuple(w.shape) for w, _ in rest] == [(128, 1280, 1, 1), (128, 1280, 1, 1), (128, 256, 1, 1), (19, 128, 1, 1)]
    img = np.asarray(Image.open(path.with_name("cityscapes_segmentation.bmp")).convert("RGB"))
    mask = np.asarray(Image.open(path.with_name("cityscapes_segmentation_mask.bmp")))
    assert img.shape[:2] == mask.shape == (513, 513)
    mean, std = torch.tensor(backbone.mean).view(1, 3, 1, 1), torch.tensor(backbone.std).view(1, 3, 1, 1)
    x = (torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float() / 255 - mean) / std
    graph = TFLiteGraph(path, emulate_int8=False).eval()
    with torch.no_grad():
        ours, float_graph = _deeplab_on(backbone, rest, x), graph(x)["out"]
    assert (ours - float_graph).abs().max() < 1e-3 * float_graph.abs().max()
    labels = ours.argmax(1)[0].numpy()
    litert = pytest.importorskip("ai_edge_litert.interpreter")
    it = litert.Interpreter(model_path=str(path))
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], img[None])
    it.invoke()
    theirs = it.get_tensor(it.get_output_details()[0]["index"])[0]
    assert (labels == theirs).mean() > 0.98  # float weights against int8 arithmetic
    assert (labels == mask).mean() > (theirs == mask).mean() - 0.01 > 0.9


def test_mobilenet_edgetpu_dilates_past_its_output_stride():
    from segviz.backbones.mobilenet_edgetpu import MobileNetEdgeTPU

    a = MobileNetEdgeTPU(output_stride=32).eval()
    b = MobileNetEdgeTPU(output_stride=8).eval()
    b.load_state_dict(a.state_dict())
    assert a.channels == (16, 24, 40, 72, 144)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        fa, fb = a(x), b(x)
    for level in range(3):
        assert torch.allclose(fa[level], fb[level])
    assert [f.shape[-1] for f in fa] == [32, 16, 8, 4, 2] and [f.shape[-1] for f in fb] == [32, 16, 8, 8, 8]
    rates = [blk.spatial[0].dilation[0] for blk in b.blocks]
    assert rates == [1] * 8 + [1] + [2] * 7 + [2] + [4] * 4  # block 9 keeps rate 1, as the first of a dilated stage
    assert [blk.spatial[0].dilation[0] for blk in MobileNetEdgeTPU(output_stride=16).blocks][16:] == [1, 2, 2, 2, 2]  # the file's rates


def test_mobilenet_edgetpu_weights_missing_or_tampered_are_one_line_errors(tmp_path, monkeypatch):
    import importlib

    from segviz.weights import WeightsError

    m = importlib.import_module("segviz.backbones.mobilenet_edgetpu")  # the package exports the builder by this name

    monkeypatch.setattr(m, "locations", lambda: [tmp_path / m.FILE])
    with pytest.raises(WeightsError, match="weights download mobilenet_edgetpu.cityscapes"):
        m.mobilenet_edgetpu(weights="cityscapes")
    data = bytearray(_cityscapes_file().read_bytes())
    data[1000] ^= 1
    (tmp_path / m.FILE).write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="sha256"):
        m.mobilenet_edgetpu(weights="cityscapes")
    with pytest.raises(ValueError, match="choose 'cityscapes'"):
        m.mobilenet_edgetpu(weights="imagenet")
