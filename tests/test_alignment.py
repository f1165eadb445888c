"""Masks line up with the image: every model of both sets, on real images.

The mirror test: predict on an image and on its mirror image, flip the second back, and find the
horizontal shift that best aligns the two label maps; half of it is the model's offset."""
import numpy as np
import pytest
from PIL import Image

from conftest import CORAL
from segviz import records
from segviz.evaluate import predict_logits
from segviz.inference import load_model
from segviz.receptive_field import trace


def mirror_offset(model, image: np.ndarray, max_shift: int = 24) -> float:
    a = predict_logits(model, image).argmax(1)[0].numpy()
    b = predict_logits(model, np.ascontiguousarray(image[:, ::-1])).argmax(1)[0].numpy()[:, ::-1]
    w = a.shape[1]
    agreement = {s: (a[:, max(0, s):w + min(0, s)] == b[:, max(0, -s):w + min(0, -s)]).mean()
                 for s in range(-max_shift, max_shift + 1)}
    return max(agreement, key=agreement.get) / 2


def _photos():
    import skimage.data

    photos = [skimage.data.chelsea(), skimage.data.astronaut(), skimage.data.coffee()]
    photos += [np.asarray(Image.open(CORAL / f"{n}_segmentation.bmp").convert("RGB")) for n in ("bird", "dog")]
    # and at sizes that are not 16k+1, where TensorFlow's padding and resizes go lopsided
    return photos + [np.asarray(Image.fromarray(p).resize((p.shape[1] * 2, p.shape[0] * 2))) for p in photos[:2]]


CAMVID = [r.name for r in records.records("camvid")]


@pytest.mark.slow
@pytest.mark.parametrize("name", CAMVID)
def test_camvid_models_are_aligned_on_real_frames(name, camvid_root):
    frames = sorted((camvid_root / "val").glob("*.png"))[::25]
    model = load_model(name, device="cpu")
    offsets = [mirror_offset(model, np.asarray(Image.open(f).convert("RGB"))) for f in frames]
    assert abs(float(np.median(offsets))) <= 1.0, offsets


needs_coral = pytest.mark.skipif(not (CORAL / "deeplabv3_mnv2_pascal_quant.tflite").exists(),
                                 reason="the Coral models are not in ../shared")


@pytest.mark.slow
@needs_coral
@pytest.mark.parametrize("name", ["deeplabv3_mnv2.voc", "deeplabv3_mnv2_dm05.voc"])
def test_coral_ports_are_aligned_on_real_photos(name):
    model = load_model(name, device="cpu")
    offsets = [mirror_offset(model, p) for p in _photos()]
    assert abs(float(np.median(offsets))) <= 1.0, offsets


@needs_coral
def test_aligned_port_puts_every_output_pixel_over_its_input_pixel():
    """Traced geometry: the aligned port's output pixel p sees a field centred on p at any size; the
    TFLite-exact mode is centred only at 16k+1 (at 360x480 its grid starts 7-15 px off and stretches)."""
    from segviz.data import voc

    m = voc.get("deeplabv3_mnv2.voc")
    aligned, exact = voc.load(m).eval(), voc.load(m, exact=True).eval()
    for size in [(360, 480), (333, 517)]:
        for axis in trace(aligned, size)[1]["out"]:
            assert axis.jump == pytest.approx(1.0) and abs(axis.start) <= 1.0
    assert all(axis.jump == 1.0 and axis.start == 0 for axis in trace(exact, (513, 513))[1]["out"])
    off = trace(exact, (360, 480))[1]["out"]
    assert any(abs(axis.start) > 5 or axis.jump != pytest.approx(1.0) for axis in off)


def test_multi_scale_and_flip_averaging_is_mirror_symmetric_and_reduces_to_one_forward(camvid_root):
    """`eval --tta`: the mirror image's averaged probabilities are the mirror of the image's (each
    forward's output is flipped back), and with one scale and no flip it is the plain forward."""
    import torch

    from segviz.evaluate import predict_probs_tta

    model = load_model("fcn8s_mobilenet_edgetpu.camvid")
    image = np.asarray(Image.open(sorted((camvid_root / "val").glob("*.png"))[0]).resize((240, 176)))
    plain = predict_logits(model, image).softmax(1)
    assert torch.allclose(predict_probs_tta(model, image, scales=(1.0,), flip=False), plain, atol=1e-6)
    probs = predict_probs_tta(model, image)
    mirrored = predict_probs_tta(model, np.ascontiguousarray(image[:, ::-1]))
    assert probs.shape == plain.shape and torch.allclose(probs.sum(1), torch.ones(1, *image.shape[:2]), atol=1e-5)
    assert torch.allclose(mirrored.flip(-1), probs, atol=1e-5)
    assert not torch.allclose(probs, plain, atol=1e-3)  # the other scales and the mirror image did count
