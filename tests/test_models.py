"""Every registered model: builds, runs at input size, trains; paper-faithful sizes match references."""
import pytest
import torch
import torchvision

from segviz import registry
from segviz.registry import build, count_params, get_spec, list_models

NAMES = [s.name for s in list_models()]
# A backward pass through a VGG16/ResNet configuration costs seconds each: those run with the slow tests.
GRADIENT_NAMES = [s.name if s.compact else pytest.param(s.name, marks=pytest.mark.slow) for s in list_models()]


@pytest.fixture(scope="module")
def built():
    cache = {}

    def get(name):
        if name not in cache:
            cache.clear()  # keep one big model in memory at a time
            torch.manual_seed(0)
            cache[name] = build(name, num_classes=5)
        return cache[name]

    return get


@pytest.mark.parametrize("name", NAMES)
def test_forward_at_input_size(built, name):
    model = built(name).eval()
    with torch.no_grad():
        for shape in [(1, 3, 64, 64), (1, 3, 67, 93)]:
            out = model(torch.randn(*shape))
            assert out["out"].shape == (1, 5, *shape[-2:]), name
            assert torch.isfinite(out["out"]).all(), name


@pytest.mark.parametrize("name", GRADIENT_NAMES)
def test_every_parameter_gets_a_gradient(built, name):
    model = built(name).train()
    out = model(torch.randn(2, 3, 64, 64))
    spec = get_spec(name)
    assert ("aux" in out) == spec.aux, "only models whose paper has an auxiliary head return 'aux'"
    loss = sum(v.float().pow(2).mean() for v in out.values())
    model.zero_grad()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"{name}: no gradient for {missing[:5]}"


def test_every_architecture_has_a_compact_and_a_faithful_configuration():
    archs = {s.arch for s in list_models()}
    for arch in archs:
        specs = [s for s in list_models() if s.arch == arch]
        assert any(s.compact and s.backbone == "mobilenet_edgetpu" for s in specs), arch
        assert any(not s.compact for s in specs), arch


def test_every_architecture_keeps_an_efficientnet_lite0_configuration_like_its_compact_one():
    """The ImageNet-pretrained backbone the compact models had before MobileNet-EdgeTPU stays on every
    architecture, with the compact head, as a trial configuration (its held-out runs are on record). U-Net's
    and SegNet's decoders were widened on MobileNet-EdgeTPU only; on Lite0 they stay as its runs trained them."""
    from dataclasses import replace

    widened = {"unet": {"decoder_widths": None}, "segnet": {"widen": (1,) * 5}}
    for compact in list_models(compact=True):
        trial = get_spec(compact.name.replace(compact.backbone, "efficientnet_lite0"))
        assert trial.trial and not trial.compact and trial.arch == compact.arch
        assert trial.output_stride == compact.output_stride, compact.arch
        assert replace(compact.config, **widened.get(compact.arch, {})) == trial.config, compact.arch
        assert (compact.config != trial.config) == (compact.arch in widened), compact.arch


def test_the_compact_and_trial_backbones_start_from_their_pretrained_weights():
    """Training builds each backbone with the weights PRETRAINED names: ImageNet's, or Cityscapes' for
    MobileNet-EdgeTPU (its weights are needed from ../shared or the user cache)."""
    from conftest import CORAL

    from segviz.backbones import BACKBONES, PRETRAINED, build_backbone

    assert PRETRAINED.keys() == BACKBONES.keys()
    for name in ("efficientnet_lite0", "mobilenet_edgetpu"):
        if name == "mobilenet_edgetpu" and not (CORAL / "deeplab_mobilenet_edgetpu_slim_cityscapes_quant.tflite").exists():
            continue
        torch.manual_seed(0)
        pretrained = build_backbone(name, weights=PRETRAINED[name]).state_dict()
        torch.manual_seed(0)
        scratch = build_backbone(name).state_dict()
        changed = [k for k in scratch if scratch[k].is_floating_point() and not torch.equal(scratch[k], pretrained[k])]
        assert len(changed) > 0.9 * sum(v.is_floating_point() for v in scratch.values()), name


def test_every_model_module_registers_and_the_story_order_is_one_place_per_architecture():
    """A module in segviz/models is picked up by itself; each architecture has its own place in the story."""
    import pkgutil

    import segviz.models

    modules = {m.name for m in pkgutil.iter_modules(segviz.models.__path__)} - {"tflite_port"}  # a port, not a paper
    registered = {s.builder.func.__module__.rsplit(".", 1)[-1] for s in list_models()}
    assert registered == modules
    order = {}
    for s in list_models():
        order.setdefault(s.arch, set()).add(s.order)
    assert all(len(v) == 1 for v in order.values()), order
    places = [v.pop() for v in order.values()]
    assert len(set(places)) == len(places), "two architectures share a place in the story"
    archs = [s.arch for s in list_models()]
    assert archs[0] == "fcn32s" and archs[-1] == "unet"  # the review starts with FCN; U-Net is the closing example


def test_arxiv_ids_agree_with_the_years():
    """An arXiv id starts with YYMM of submission; the year given is that one or the next (the venue's)."""
    for s in list_models():
        yy, mm = int(s.arxiv[:2]), int(s.arxiv[2:4])
        assert 1 <= mm <= 12 and s.year in (2000 + yy, 2001 + yy), (s.name, s.arxiv, s.year)
        assert s.voc12_miou is None or 50 < s.voc12_miou < 90, s.name


# --- parameter counts against numbers no one here wrote -------------------------------------

def test_vgg16_backbone_plus_classifier_matches_torchvision_metadata():
    from segviz.models.fcn import build_fcn

    fcn = build_fcn(variant="32s", backbone="vgg16", num_classes=21)
    fc8 = 4096 * 1000 + 1000  # score_fr with ImageNet's 1000 classes is VGG16's fc8
    convolutionalised = count_params(fcn.backbone) + count_params(fcn.classifier) + fc8
    assert convolutionalised == torchvision.models.VGG16_Weights.IMAGENET1K_V1.meta["num_params"]  # 138,357,544


def test_resnet_backbones_match_torchvision_metadata():
    for name, weights in (("resnet50", torchvision.models.ResNet50_Weights), ("resnet101", torchvision.models.ResNet101_Weights)):
        from segviz.backbones import build_backbone

        fc = 2048 * 1000 + 1000
        assert count_params(build_backbone(name)) + fc == weights.IMAGENET1K_V1.meta["num_params"]


@pytest.mark.parametrize("name, published, source", [
    ("fcn8s_vgg16", 134e6, "Long et al. 2015, Table 1: FCN-VGG16 134M parameters"),
    ("deeplabv1_vgg16", 20.5e6, "Chen et al. 2015, Table 2: DeepLab-CRF-LargeFOV 20.5M parameters"),
    ("segnet_vgg16", 29.5e6, "Badrinarayanan et al. 2017, Table 6: SegNet 29.5M parameters"),
    ("unet_vanilla", 31.04e6, "milesial/Pytorch-UNet: the paper's U-Net, 31.04M parameters"),
    ("deeplabv3_resnet50", torchvision.models.segmentation.DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1
     .meta["num_params"], "torchvision DeepLabV3_ResNet50_Weights meta num_params (42,004,074)"),
])
def test_paper_faithful_parameter_counts(name, published, source):
    n = count_params(build(name, num_classes=21 if "unet" not in name else 2))
    assert abs(n - published) / published < 0.02, f"{name}: {n} vs {published} ({source})"


def test_shared_heads_are_torchvisions():
    """layers.FCNHead (DeepLab v3's and PSPNet's aux head) and DeepLab v3's head match torchvision's modules."""
    from torchvision.models.segmentation.deeplabv3 import DeepLabHead as TVDeepLabHead
    from torchvision.models.segmentation.fcn import FCNHead as TVFCNHead

    from segviz.layers import FCNHead
    from segviz.models.deeplab import DeepLabHead

    x = torch.randn(2, 1024, 9, 11)
    for ours, theirs in ((FCNHead(1024, 21), TVFCNHead(1024, 21)),
                         (DeepLabHead(1024, 21, (12, 24, 36)), TVDeepLabHead(1024, 21, (12, 24, 36)))):
        assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
        ours.load_state_dict(theirs.state_dict(), strict=True)
        with torch.no_grad():
            torch.testing.assert_close(ours.eval()(x), theirs.eval()(x))


# --- errors -----------------------------------------------------------------------------------

def test_unknown_model_names_the_choices():
    with pytest.raises(registry.UnknownModelError) as e:
        build("fcn9s_vgg16")
    msg = str(e.value)
    assert "\n" not in msg and "fcn9s_vgg16" in msg and "fcn8s_vgg16" in msg and "deeplabv3_efficientnet_lite0" in msg


def test_bad_builder_arguments_are_one_line_errors():
    with pytest.raises(TypeError) as e:
        build("fcn8s_efficientnet_lite0", num_clases=3)
    assert "num_clases" in str(e.value) and "num_classes" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match="num_classes"):
        build("fcn8s_efficientnet_lite0", num_classes=0)
    with pytest.raises(ValueError, match="output_stride"):
        build("deeplabv3_efficientnet_lite0", output_stride=12)
    with pytest.raises(ValueError, match="imagenet"):
        build("segnet_efficientnet_lite0", backbone_weights="coco")


def test_duplicate_registration_is_refused():
    spec = get_spec("fcn8s_vgg16")
    with pytest.raises(ValueError, match="twice"):
        registry.register(spec)


@pytest.mark.parametrize("name", [s.name if s.compact else pytest.param(s.name, marks=pytest.mark.slow)
                                  for s in list_models()])  # slow: the VGG/ResNet configurations
def test_spec_output_stride_is_where_the_logits_are_made(name):
    """The spec's output stride is the stride of the finest map the logits are computed at (the last
    convolution with one channel per class, before any upsampling to the input's size)."""
    model, strides = build(name, num_classes=7).eval(), []
    for m in model.modules():
        if type(m) is torch.nn.Conv2d:
            m.register_forward_hook(lambda m, i, out: strides.append(256 / out.shape[-1]) if out.shape[1] == 7 else None)
    with torch.no_grad():
        model(torch.zeros(1, 3, 256, 256))
    assert strides and round(min(strides)) == get_spec(name).output_stride, strides


def test_output_stride_is_real():
    """A backbone built for output stride 8, 16 or 32 ends at that stride."""
    from segviz.backbones import build_backbone

    for os_ in (8, 16, 32):
        for name in ("efficientnet_lite0", "vgg16", "resnet50"):
            feats = build_backbone(name, output_stride=os_).eval()(torch.zeros(1, 3, 64, 64))
            assert feats[-1].shape[-1] == 64 // os_, (name, os_)


@pytest.mark.parametrize("backbone", ["mobilenet_edgetpu", "efficientnet_lite0"])
def test_compact_segnet_keeps_the_pretrained_encoder_and_unpools_at_its_maxima(backbone):
    """The compact SegNet's encoder is the backbone unchanged (strided), and each decoder
    level below stride 32 starts from a sparse map whose non-zeros sit where the features entering
    that stride peaked in their 2x2 window (SegNet's index unpooling, nothing learned). On
    MobileNet-EdgeTPU the decoder is k times as wide as the encoder, each index map serving k channels."""
    import torch.nn.functional as F

    from segviz.backbones import build_backbone

    torch.manual_seed(0)
    model = build(f"segnet_{backbone}", num_classes=5).eval()
    plain = build_backbone(backbone)
    plain.load_state_dict(model.backbone.state_dict())
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        levels = plain.eval()(x)  # the model takes normalised input, as the runners give it
    assert [tuple(f.shape[-2:]) for f in levels] == [(32, 48), (16, 24), (8, 12), (4, 6), (2, 3)]
    seen = {}
    hooks = [model.decoder[i].register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(i, a[0])) for i in range(4)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in model.modules())
    widen = {"mobilenet_edgetpu": (2, 4, 4, 4), "efficientnet_lite0": (1, 1, 1, 1)}[backbone]
    for i in range(4):
        sparse, feat = seen[i], levels[i].repeat(1, widen[i], 1, 1)  # decoder channel j: encoder channel j mod C
        assert sparse.shape == feat.shape
        window_max = F.interpolate(F.max_pool2d(feat, 2, 2), scale_factor=2, mode="nearest")
        nonzero = sparse != 0
        assert nonzero.float().mean() <= 0.25 + 1e-6  # at most one value per 2x2 window
        assert nonzero.any() and bool((feat[nonzero] == window_max[nonzero]).all())
