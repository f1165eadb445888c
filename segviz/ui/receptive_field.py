"""Receptive field tab: click a pixel, see each model's theoretical field (box) and effective
field (gradient heatmap). Handlers are plain functions; only ``build_tab`` touches gradio."""

import functools

import numpy as np

from .. import viz
from .. import records
from ..compare import load, resolve
from ..preprocess import prepare_image
from ..receptive_field import describe, effective_field, erf_extent, field_box, trace


@functools.lru_cache(maxsize=64)
def theoretical_field(name: str, size: tuple[int, int]):
    """Traced once per model and image size (the weights do not matter, the graph does)."""
    return trace(load(name), size)[1]["out"]


def check_pixel(pixel) -> tuple[int, int]:
    """A (y, x) pair of whole numbers, or a one-line ValueError."""
    try:
        y, x = pixel
    except (TypeError, ValueError):
        raise ValueError(f"the pixel must be a (y, x) pair of whole numbers, got {pixel!r}") from None
    for v in (y, x):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or \
                not np.isfinite(v) or float(v) != int(v):
            raise ValueError(f"the pixel must be a (y, x) pair of whole numbers, got {pixel!r}")
    return int(y), int(x)


def scale_pixel(pixel, original_size, working_size) -> tuple[int, int]:
    """A click on the uploaded image -> the same point on the (possibly downscaled) working image.

    A pixel outside the uploaded image is refused, not moved to the nearest edge."""
    y, x = check_pixel(pixel)
    if not (0 <= y < original_size[0] and 0 <= x < original_size[1]):
        raise ValueError(f"pixel (y={y}, x={x}) is outside the {original_size[1]}x{original_size[0]} image; "
                         f"click inside it")
    sy, sx = working_size[0] / original_size[0], working_size[1] / original_size[1]
    return min(int(y * sy), working_size[0] - 1), min(int(x * sx), working_size[1] - 1)


def erf_grid(image, pixel, names, class_name: str | None = None, random_inputs: int = 0, progress=None):
    """Per model: the ERF heatmap of ``pixel`` with the theoretical field drawn as a box, and a
    table row (model, class, theoretical field, ERF extent at 5% of its peak)."""
    prepared = prepare_image(image)
    img = prepared.image
    size = img.shape[:2]
    # No click yet (a new image, or an API call): the centre.
    pixel = (size[0] // 2, size[1] // 2) if pixel is None else scale_pixel(pixel, prepared.original_size, size)
    if not names:
        raise ValueError("select at least one model")
    todo = resolve(list(names))
    classes = list(todo[0].labels.classes)
    if class_name not in (None, "", "predicted") and class_name not in classes:
        raise ValueError(f"unknown class {class_name!r} for {todo[0].dataset.name}; choose one of: {', '.join(classes)}")
    class_index = None if class_name in (None, "", "predicted") else classes.index(class_name)
    tiles, rows = [], []
    for i, r in enumerate(todo):
        name = r.name
        if progress:
            progress(i / len(todo), f"gradients of {r.title}")
        erf, c = effective_field(load(name), img, pixel, class_index, samples=random_inputs)
        field = theoretical_field(name, size)
        ey, ex = erf_extent(erf)
        tile = viz.draw_box(viz.heatmap_overlay(img, erf), field_box(field, pixel, size), pixel)
        cls = classes[c] if c is not None else "predicted (random inputs)"
        tiles.append((tile, f"{r.title} · {cls}"))
        rows.append([r.title, cls, describe(field), f"{ey} x {ex} px"])
    return tiles, rows, pixel


HEADERS = ["model", "class", "theoretical field", "ERF extent (>5% of peak)"]


def build_tab(gr, user_error):
    from . import gallery_files, upload_image

    from .compare import dataset_choices, example_images, model_choices

    ready, _ = model_choices("camvid")
    every = [choice for d in records.datasets() for choice in model_choices(d)[0]]  # valid from any fresh client
    with gr.Tab("Receptive field", id="receptive-field"):
        gr.Markdown("Click a pixel. Each tile shows the **effective receptive field** (|d logit / d input|, "
                    "Luo et al. 2016) as a heatmap and the **theoretical field** as a cyan box: the effective "
                    "field is far smaller. A missing box means the field is the whole image (global pooling).")
        pixel = gr.State(None)  # (y, x) of the last click on this image; None: the centre
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                image = upload_image(gr, label="Image (click a pixel)", elem_id="rf-image")
                examples = example_images()
                if examples:
                    gr.Examples(examples[:3], inputs=image)
                where = gr.Markdown("Pixel: the centre (click the image to choose one)")
                model_set = gr.Radio(dataset_choices(), value="camvid", label="Model set")
                names = gr.CheckboxGroup(every, value=[n for _, n in ready], label="Models", elem_id="rf-models")
                cls = gr.Dropdown(["predicted"] + list(records.datasets()["camvid"].labels.classes),
                                  value="predicted", label="Class whose logit is differentiated",
                                  allow_custom_value=True)  # erf_grid checks the class against the models' set
                random = gr.Checkbox(False, label="Image-independent: average over 4 random inputs")
                run = gr.Button("Show fields", variant="primary", elem_id="rf-run")
            with gr.Column(scale=2):
                grid = gr.Gallery(label="Effective (heatmap) vs theoretical (box) field", columns=3, height="auto",
                                  format="png", elem_id="rf-grid")
                table = gr.Dataframe(headers=HEADERS, interactive=False)

        def on_select(evt: gr.SelectData):
            with user_error():
                x, y = check_pixel(evt.index)  # Gradio sends [x, y]
            return (y, x), f"Pixel: (y={y}, x={x})"

        def on_run(image, pixel, names, cls, random, progress=gr.Progress()):
            with user_error():
                tiles, rows, _ = erf_grid(image, pixel, names, cls, 4 if random else 0,
                                          progress=lambda f, m: progress(f, desc=m))
            return gallery_files(tiles), rows

        def on_model_set(model_set):
            ready, _ = model_choices(model_set)
            classes = ["predicted"] + list(records.datasets()[model_set].labels.classes)
            return gr.CheckboxGroup(choices=ready, value=[n for _, n in ready][:4]), gr.Dropdown(choices=classes,
                                                                                               value="predicted")

        image.select(on_select, None, [pixel, where])
        image.upload(lambda: (None, "Pixel: the centre (click the image to choose one)"), None, [pixel, where],
                     api_name=False)
        run.click(on_run, [image, pixel, names, cls, random], [grid, table], api_name="receptive_field",
                  concurrency_limit=1)
        model_set.change(on_model_set, model_set, [names, cls], api_name=False)
    return on_model_set, model_set, [names, cls]
