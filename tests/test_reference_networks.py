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
