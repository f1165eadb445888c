"""The Gradio app: one module per tab. Importing segviz never imports gradio; build() does."""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import time

import numpy as np
import torch

from .. import env_number

OUTPUTS = os.path.join(tempfile.gettempdir(), "segviz-outputs")
KEEP_OUTPUTS_S = env_number("SEGVIZ_KEEP_OUTPUTS", 3600)  # our PNGs and Gradio's cached copies


def device_line() -> str:
    if torch.cuda.is_available():
        return f"Models run on **CUDA** ({torch.cuda.get_device_name(0)})."
    from ..backends import missing_note

    note = missing_note()
    return (f"Models run on the **CPU** ({torch.get_num_threads()} threads); a CUDA GPU is used when present."
            + (f" Note: {note}." if note else ""))


@contextlib.contextmanager
def user_error():
    """Turn our one-line input errors into a UI message instead of a stack trace."""
    import gradio as gr

    from ..preprocess import InputError
    from ..weights import WeightsError

    try:
        yield
    except (InputError, WeightsError, ValueError, FileNotFoundError, KeyError) as e:
        raise gr.Error(str(e).strip("'\""), print_exception=False) from None


def upload_image(gr, **kwargs):
    """An Image widget (upload, paste, click to select a pixel) whose preprocessing cannot fail.

    Gradio's own Image decodes the upload before our handler runs, so an empty, corrupt or huge
    file fails inside Gradio with its server temp path in the message. This one hands the handler
    the uploaded file's path (or a pasted image's bytes) untouched; ``segviz.preprocess`` decodes it
    and refuses bad files with one line."""
    import base64
    import types

    def preprocess(self, payload):
        if payload is None:
            return None
        url = getattr(payload, "url", None)
        if url and url.startswith("data:"):  # a pasted image
            try:
                return base64.b64decode(url.split(",", 1)[1])
            except (IndexError, ValueError):
                return b""
        return payload.path

    image = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard"], **kwargs)
    # On the instance, not a subclass: a gradio component subclass writes a .pyi file next to its module.
    image.preprocess = types.MethodType(preprocess, image)
    return image


def png_file(image):
    """Write an image (numpy) to a new, uniquely named PNG and return its path; anything else passes through.

    Gradio saves a returned array at a path named by its content, rewriting the file in place, so a
    second client asking for the same picture could download it half written. A file we hand over is
    copied into Gradio's cache atomically, under its own unique name. Files older than
    ``KEEP_OUTPUTS_S`` are removed as new ones are written."""
    if not isinstance(image, np.ndarray):
        return image
    from PIL import Image

    data = io.BytesIO()
    Image.fromarray(image).save(data, format="PNG", compress_level=1)
    return output_file(data.getvalue(), ".png")


def output_file(data: bytes, suffix: str, prefix: str = "out-") -> str:
    """``data`` in a new file of its own in ``OUTPUTS``, removed with the others after ``KEEP_OUTPUTS_S``."""
    os.makedirs(OUTPUTS, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=OUTPUTS)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    prune_older(OUTPUTS, KEEP_OUTPUTS_S)
    return path


_last_prune: dict[str, float] = {}


def prune_older(folder: str, age_s: float, every_s: float = 60):
    """Remove the files and folders in ``folder`` not modified for ``age_s`` seconds (at most once a
    minute per folder)."""
    now = time.time()
    if now - _last_prune.get(folder, 0.0) < every_s:
        return
    _last_prune[folder] = now
    for entry in os.scandir(folder):
        try:
            if now - entry.stat().st_mtime > age_s:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
        except OSError:
            pass


def gallery_files(items):
    return [(png_file(image), caption) for image, caption in items]


def build():
    import gradio as gr

    from . import compare, dilation, models, receptive_field, review

    with gr.Blocks(title="segviz: semantic segmentation, side by side", analytics_enabled=False,
                   delete_cache=(max(60, KEEP_OUTPUTS_S // 4), KEEP_OUTPUTS_S)) as demo:
        gr.Markdown("# segviz\nThe classic semantic-segmentation architectures, side by side. " + device_line(),
                    elem_id="header")
        with gr.Tabs() as tabs:
            narrow, model_set, outputs, compare_inputs = compare.build_tab(gr, user_error)
            rf_narrow, rf_set, rf_outputs = receptive_field.build_tab(gr, user_error)
            review_narrow, review_set, review_models = review.build_tab(gr, user_error, tabs, compare_inputs)
            dilation.build_tab(gr, user_error)
            models.build_tab(gr)
        # Each page shows one set's models; an API client may name any ready model.
        demo.load(narrow, model_set, outputs, api_name=False)
        demo.load(rf_narrow, rf_set, rf_outputs, api_name=False)
        demo.load(review_narrow, review_set, review_models, api_name=False)
    return demo
