"""Every odd image a user may upload becomes an upright RGB uint8 image, or a one-line error."""
import io

import numpy as np
import pytest
from PIL import Image

from segviz.preprocess import MAX_SIDE, InputError, prepare_image, prepare_mask


def _save(im: Image.Image, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def gradient(w=64, h=48):
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :].repeat(h, 0)
    return np.stack([x, x[::-1], np.full_like(x, 128)], -1).astype(np.uint8)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "LA", "1", "I;16"])
def test_modes_become_rgb(mode):
    rgb = Image.fromarray(gradient())
    if mode == "I;16":
        im = Image.fromarray((np.asarray(rgb.convert("L")).astype(np.uint16) * 257))
        assert im.mode == "I;16"
    else:
        im = rgb.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else ("TIFF" if mode == "LA" else "PNG")
    p = prepare_image(_save(im, fmt))
    assert p.image.dtype == np.uint8 and p.image.shape == (48, 64, 3)
    if mode in ("I;16", "L"):
        ref = np.asarray(rgb.convert("L"))
        assert np.abs(p.image[..., 0].astype(int) - ref).max() <= 1  # 16-bit scaled back to the same grey levels
    else:  # the colours Pillow itself gives the mode (RGBA and LA are opaque here; JPEG's CMYK is lossy)
        ref = np.asarray(Image.open(io.BytesIO(_save(im, fmt))).convert("RGB")).astype(int)
        assert np.abs(p.image.astype(int) - ref).mean() <= (3 if mode == "CMYK" else 0)
        assert p.image.std() > 20  # the gradient survived


def test_transparent_pixels_become_white():
    a = np.zeros((20, 20, 4), np.uint8)
    a[..., 0] = 255  # red, fully transparent
    p = prepare_image(_save(Image.fromarray(a, "RGBA")))
    assert (p.image == 255).all() and any("transparency" in n for n in p.notes)


def test_exif_rotation_is_applied():
    im = Image.fromarray(gradient(64, 48))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    p = prepare_image(_save(im, "JPEG", exif=exif.tobytes()))
    assert p.image.shape == (64, 48, 3) and any("EXIF" in n for n in p.notes)
    # Turned clockwise: the gradient's left (dark red) column becomes the top row.
    expected = np.rot90(gradient(64, 48), -1).astype(int)
    assert np.abs(p.image.astype(int) - expected).mean() < 4  # JPEG's loss
    assert np.abs(p.image.astype(int) - np.rot90(gradient(64, 48), 1)).mean() > 50  # not the other way


def test_huge_image_is_downscaled_and_said():
    im = Image.new("RGB", (4000, 3000), (10, 20, 30))
    p = prepare_image(_save(im))
    assert max(p.image.shape[:2]) == MAX_SIDE and p.original_size == (3000, 4000)
    assert any("downscaled" in n for n in p.notes)


def test_decompression_bomb_is_refused(tmp_path):
    im = Image.new("1", (9000, 6000))  # 54 Mpx, tiny file
    path = tmp_path / "bomb.png"
    im.save(path)
    with pytest.raises(InputError, match="refusing"):
        prepare_image(str(path))


@pytest.mark.parametrize("data, message", [
    (b"not an image at all", "not a readable image"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "not a readable image"),
])
def test_corrupt_files(data, message):
    with pytest.raises(InputError, match=message) as e:
        prepare_image(data)
    assert "\n" not in str(e.value)


def test_truncated_png_is_refused():
    data = _save(Image.fromarray(gradient()))
    with pytest.raises(InputError, match="not a readable image"):
        prepare_image(data[: len(data) // 2])


def test_tiny_image_is_refused():
    with pytest.raises(InputError, match="1x1"):
        prepare_image(_save(Image.new("RGB", (1, 1))))


def test_missing_file():
    with pytest.raises(InputError, match="does not exist"):
        prepare_image("/nonexistent/file.png")


def test_mask_checks():
    good = np.zeros((48, 64), np.uint8)
    good[:, 32:] = 11
    assert prepare_mask(_save(Image.fromarray(good)), (48, 64), 11, 11).tolist() == good.tolist()
    with pytest.raises(InputError, match="is 32x24 but the image is 64x48"):
        prepare_mask(_save(Image.fromarray(good[:24, :32])), (48, 64), 11, 11)
    bad = good.copy()
    bad[0, 0] = 200
    with pytest.raises(InputError, match="200"):
        prepare_mask(_save(Image.fromarray(bad)), (48, 64), 11, 11)
    colour = np.zeros((48, 64, 3), np.uint8)
    colour[..., 0] = 128
    with pytest.raises(InputError, match="colour"):
        prepare_mask(_save(Image.fromarray(colour)), (48, 64), 11, 11)


def test_mask_of_a_downscaled_image_follows_it():
    mask = np.zeros((3000, 4000), np.uint8)
    mask[:, 2000:] = 3
    out = prepare_mask(_save(Image.fromarray(mask)), (768, 1024), 11, 11, original_size=(3000, 4000))
    assert out.shape == (768, 1024) and set(np.unique(out)) == {0, 3}  # nearest: no blended ids at the edge
    assert (out[:, :512] == 0).all() and (out[:, 513:] == 3).all()


def huge_png(path, side=20000):
    """A real 1-bit ``side`` x ``side`` PNG (a few hundred kB): small on disk, a bomb once decoded."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    z = zlib.compressobj(9)
    row = b"\0" * (1 + (side + 7) // 8)
    body = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


BAD_UPLOADS = {
    "empty.png": lambda p: p.write_bytes(b"") and p,
    "random.png": lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)) and p,
    "page.png": lambda p: p.write_bytes(b"<!DOCTYPE html><html><body>not an image</body></html>") and p,
    "drawing.png": lambda p: p.write_bytes(b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>') and p,
    "huge.png": huge_png,
}


def make_bad_upload(tmp_path, name):
    path = tmp_path / name
    BAD_UPLOADS[name](path)
    return str(path)


@pytest.mark.parametrize("name", sorted(BAD_UPLOADS))
def test_bad_uploads_are_one_line_errors_without_paths(tmp_path, name):
    path = make_bad_upload(tmp_path, name)
    with pytest.raises(InputError) as e:
        prepare_image(path)
    message = str(e.value)
    assert "\n" not in message and str(tmp_path) not in message and "/" not in message, message


def test_missing_file_message_names_no_directory(tmp_path):
    with pytest.raises(InputError, match="^gone.png does not exist$"):
        prepare_image(str(tmp_path / "gone.png"))
