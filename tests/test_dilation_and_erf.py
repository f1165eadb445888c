"""Dilation patterns, effective receptive fields, and the two teaching tabs' handlers."""
import numpy as np
import pytest
import torch
from torch import nn

from segviz import registry
from segviz.dilation import holes, model_branches, stacked_coverage, taps
from segviz.receptive_field import effective_field, erf_extent, field_box, final_field


def test_taps_of_a_dilated_kernel():
    t = taps(4)
    assert len(t) == 9 and set(map(tuple, t)) >= {(-4, -4), (0, 0), (4, 4), (4, -4)}
    assert taps(1, kernel=1).tolist() == [[0, 0]]
    with pytest.raises(ValueError):
        taps(0)


def test_gridding_of_equal_rates_and_hdc_rates():
    # Wang et al. 2018 ("Understanding Convolution for Semantic Segmentation"): rates 2,2,2
    # reach only every other pixel; 1,2,5 cover the whole 17x17 field.
    equal = stacked_coverage([2, 2, 2])
    assert equal.shape == (13, 13) and holes(equal) == 13 * 13 - 7 * 7
    hdc = stacked_coverage([1, 2, 5])
    assert hdc.shape == (17, 17) and holes(hdc) == 0
    assert stacked_coverage([1]).sum() == 9 and stacked_coverage([1, 1]).sum() == 81


def test_coverage_matches_the_traced_field():
    net = nn.Sequential(*[nn.Conv2d(3, 3, 3, padding=r, dilation=r) for r in (1, 2, 4, 8)])
    h, _ = final_field(net, (64, 64))
    assert stacked_coverage([1, 2, 4, 8]).shape[0] == h.size == 31


def test_model_branches_are_the_models_own():
    aspp = model_branches("deeplabv2_mobilenet_edgetpu")
    assert [b.rate for b in aspp] == [6, 12, 18, 24] and {b.stride for b in aspp} == {8}
    v3 = model_branches("deeplabv3_mobilenet_edgetpu")
    assert [b.rate for b in v3 if not b.bins][1:] == [6, 12, 18] and v3[-1].bins == 1
    assert [b.bins for b in model_branches("pspnet_mobilenet_edgetpu")] == [1, 2, 3, 6]
    assert [b.rate for b in model_branches("dilation8_mobilenet_edgetpu")] == [1, 1, 2, 4, 8, 16, 1]
    with pytest.raises(ValueError, match="no dilated"):
        model_branches("fcn8s_mobilenet_edgetpu")


class Tiny(nn.Module):
    """Two 3x3 convs: a 5x5 theoretical field; the ERF must sit inside it."""

    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1))
        self.register_buffer("m", torch.zeros(1, 3, 1, 1))

    def normalize(self, x):
        return x

    def forward(self, x):
        return {"out": self.net(x)}


def test_effective_field_lies_inside_the_theoretical_one():
    torch.manual_seed(0)
    model = Tiny()
    image = (np.random.default_rng(0).random((32, 40, 3)) * 255).astype(np.uint8)
    erf, c = effective_field(model, image, (10, 20))
    assert erf.shape == (32, 40) and erf.max() == pytest.approx(1.0) and c in (0, 1)
    ys, xs = np.nonzero(erf)
    assert ys.min() >= 8 and ys.max() <= 12 and xs.min() >= 18 and xs.max() <= 22
    extent = erf_extent(erf, 1e-9)
    assert extent[0] <= 5 and extent[1] <= 5
    h, w = final_field(model, (32, 40))
    assert field_box((h, w), (10, 20)) == (7.5, 17.5, 12.5, 22.5)
    # Centred where the trace puts the field: upsampled by 32 without corner alignment, 15.5 px up and left.
    from segviz.receptive_field import Field

    assert field_box((Field(91, 1, -15.5), Field(91, 1, -15.5)), (100, 200)) == (39.0, 139.0, 130.0, 230.0)
    avg, _ = effective_field(model, image, (10, 20), class_index=1, samples=3)
    assert avg.shape == (32, 40)
    # Random inputs go through in one batch: the same map as each input's gradient taken on its own.
    g = torch.Generator().manual_seed(0)
    total = 0
    for _ in range(3):
        x = torch.rand(1, 3, 32, 40, generator=g).requires_grad_(True)
        (grad,) = torch.autograd.grad(model(x)["out"][0, 1, 10, 20], x)
        total = total + grad[0].abs().sum(0)
    assert np.allclose(avg, (total / total.max()).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="outside"):
        effective_field(model, image, (40, 0))
    with pytest.raises(ValueError, match="class 5"):
        effective_field(model, image, (1, 1), class_index=5)


@pytest.mark.parametrize("name", ["deeplabv1_mobilenet_edgetpu", "deeplabv2_mobilenet_edgetpu", "pspnet_mobilenet_edgetpu",
                                  "segnet_mobilenet_edgetpu", "unet_mobilenet_edgetpu"])
def test_gradient_twin_has_the_models_forward_and_input_gradient(name):
    # The twin folds batch norm, flips depthwise kernels for their input gradient and keeps ReLU masks:
    # its logits and input gradient must be the network's own (plain autograd), with trained-like
    # batch-norm statistics and asymmetric kernels.
    from segviz.gradients import gradient_twin

    torch.manual_seed(0)
    model = registry.build(name, num_classes=5, backbone_weights=None).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5), nn.init.uniform_(m.bias, -0.2, 0.2)
    twin = gradient_twin(model)
    assert gradient_twin(model) is twin and not any(isinstance(m, nn.BatchNorm2d) for m in twin.modules())
    x = torch.randn(1, 3, 64, 96)
    grads = []
    for net in (model, twin):
        inp = x.clone().requires_grad_(True)
        out = net(inp)["out"]
        (g,) = torch.autograd.grad(out[0, 2, 30, 41], inp)
        grads.append((out.detach(), g))
    (out, g), (out_t, g_t) = grads
    assert torch.allclose(out_t, out, atol=1e-4, rtol=1e-4)
    assert g.abs().max() > 0 and torch.allclose(g_t, g, atol=1e-5 * g.abs().max().item(), rtol=1e-3)
    assert all(p.requires_grad for p in model.parameters())  # the model itself is untouched
    with torch.no_grad():  # a changed model gets a new twin
        next(model.parameters()).mul_(2)
    assert gradient_twin(model) is not twin and torch.allclose(gradient_twin(model)(x)["out"], model(x)["out"], atol=1e-4)


def test_effective_field_keeps_the_forward_for_a_new_pixel(monkeypatch):
    import segviz.gradients as gradients

    torch.manual_seed(0)
    model = Tiny()
    image = (np.random.default_rng(1).random((32, 40, 3)) * 255).astype(np.uint8)
    calls = []
    forward = Tiny.forward
    monkeypatch.setattr(Tiny, "forward", lambda self, x: calls.append(1) or forward(self, x))
    gradients.forget_graphs()
    a, _ = effective_field(model, image, (10, 20))
    b, _ = effective_field(model, image, (20, 5))  # same image: the kept graph, no new forward
    assert len(calls) == 1 and np.nonzero(a)[0].max() <= 12 and np.nonzero(b)[0].min() >= 18
    effective_field(model, image[::-1].copy(), (10, 20))  # a new image replaces the kept graph
    assert len(calls) == 2 and len(gradients._GRAPHS) == 1
    monkeypatch.setattr(gradients, "KEPT_GRAPH_BYTES", 0)  # over the bound: the latest graph only
    other = Tiny()
    effective_field(other, image, (10, 20))
    assert len(gradients._GRAPHS) == 1


def test_dilation_handlers():
    from segviz.ui.dilation import coverage, parse_rates

    fig, text = coverage("1, 2, 5")
    assert "17 px" in text and "0 pixels" in text
    assert parse_rates("2 2,2") == [2, 2, 2]
    for bad in ("a, b", "0", ""):
        with pytest.raises(ValueError):
            parse_rates(bad)


def test_branch_taps_draw_on_the_image(camvid_root):
    from segviz.ui.dilation import branch_taps

    image = camvid_root / "val" / "0016E5_07959.png"
    drawn, legend = branch_taps(str(image), (180, 240), "deeplabv2_mobilenet_edgetpu")
    assert drawn.shape == (360, 480, 3) and "rate 24" in legend
    # The rate-6 taps sit 6 x 8 = 48 px from the pixel, in the first branch colour.
    from segviz.viz import BRANCH_COLOURS

    assert tuple(drawn[180 - 48, 240 - 48]) == BRANCH_COLOURS[0]


def test_branch_taps_without_a_click_centre_on_any_image_size():
    """No click yet (or a new upload): the centre of the image, whatever its size."""
    import numpy as np

    from segviz.ui.dilation import branch_taps
    from segviz.viz import BRANCH_COLOURS

    small = np.full((120, 160, 3), 128, np.uint8)
    drawn, _ = branch_taps(small, None, "deeplabv2_mobilenet_edgetpu")
    assert drawn.shape == (120, 160, 3)
    assert tuple(drawn[60 - 48, 80 - 48]) == BRANCH_COLOURS[0]  # rate 6 x stride 8 from the centre


@pytest.mark.parametrize("name", [s.name for s in registry.list_models(compact=True) if s.branches()])
def test_declared_branches_exist_in_the_built_head(name):
    """What a spec declares for the Dilation tab is what the built head really does (not the backbone)."""
    from torch import nn

    model = registry.build(name, num_classes=3)
    assert model.branches() == model_branches(name)
    head = [m for n, m in model.named_modules() if not n.startswith("backbone")]
    rates = {m.dilation[0] for m in head if isinstance(m, nn.Conv2d) and m.kernel_size[0] > 1}
    from segviz.models.pspnet import AdaptiveAvgPool

    bins = {m.output_size if isinstance(m.output_size, int) else m.output_size[0]
            for m in head if isinstance(m, nn.AdaptiveAvgPool2d)}
    bins |= {m.bins for m in head if isinstance(m, AdaptiveAvgPool)}  # PSPNet's exportable bins
    for b in model_branches(name):
        assert (b.bins in bins) if b.bins else (b.kernel == 1 or b.rate in rates), (name, b)
    assert model.backbone.output_stride == registry.get_spec(name).output_stride
    assert {b.stride for b in model_branches(name)} == {model.backbone.output_stride}


def test_a_field_larger_than_the_image_is_drawn_dashed_on_its_edges():
    from segviz.receptive_field import Field, beyond_image, describe
    from segviz.viz import FIELD_COLOUR, draw_box

    big = (Field(1237.65), Field(1231.0))  # SegNet's field once looked like this
    assert describe(big) == "1238 x 1231 px"  # whole pixels
    assert beyond_image(big, (360, 480)) == "3.4x the image's height, 2.6x its width"
    assert beyond_image((Field(101), Field(101)), (360, 480)) == ""
    image = np.zeros((60, 80, 3), np.uint8)
    cyan = lambda a: np.all(a == FIELD_COLOUR, axis=-1)  # noqa: E731
    inside = draw_box(image, field_box((Field(21), Field(31)), (30, 40)), (30, 40))
    assert cyan(inside[19:21, 30:50]).all() and not cyan(inside[0]).any()  # a solid box, within the image
    drawn = draw_box(image, field_box(big, (30, 40)), (30, 40), "3.4x")  # the label: bottom left
    for edge in (drawn[1, :], drawn[-2, :], drawn[:-16, 1], drawn[:-16, -2]):  # every side beyond: dashed edges
        share = cyan(edge).mean()
        assert 0.3 < share < 0.8, share
