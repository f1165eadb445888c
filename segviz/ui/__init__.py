"""The Gradio app: one module per tab. Importing segviz never imports gradio; build() does."""
from __future__ import annotations

import contextlib

import torch


def device_line() -> str:
    if torch.cuda.is_available():
        return f"Models run on **CUDA** ({torch.cuda.get_device_name(0)})."
    return f"Models run on the **CPU** ({torch.get_num_threads()} threads); a CUDA GPU is used when present."


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


def build():
    import gradio as gr

    from . import compare, dilation, models, receptive_field

    with gr.Blocks(title="segviz: semantic segmentation, side by side", analytics_enabled=False) as demo:
        gr.Markdown("# segviz\nThe classic semantic-segmentation architectures, side by side. " + device_line(),
                    elem_id="header")
        with gr.Tabs():
            narrow, model_set, outputs = compare.build_tab(gr, user_error)
            rf_narrow, rf_set, rf_outputs = receptive_field.build_tab(gr, user_error)
            dilation.build_tab(gr, user_error)
            models.build_tab(gr)
        # Each page shows one set's models; an API client may name any ready model.
        demo.load(narrow, model_set, outputs, api_name=False)
        demo.load(rf_narrow, rf_set, rf_outputs, api_name=False)
    return demo
