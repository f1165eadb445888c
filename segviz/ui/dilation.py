"""Dilation tab: tap patterns of dilated convs, gridding of stacked rates, and a model's own
ASPP / context / pyramid branches drawn on the image. Handlers are plain functions."""

from .. import viz
from ..dilation import holes, model_branches, stacked_coverage
from ..preprocess import prepare_image, scale_pixel


def parse_rates(text: str) -> list[int]:
    try:
        rates = [int(v) for v in str(text).replace(",", " ").split()]
    except ValueError:
        raise ValueError(f"rates must be whole numbers separated by commas, got {text!r}") from None
    if not rates or min(rates) < 1 or max(rates) > 64 or len(rates) > 12:
        raise ValueError("give 1 to 12 rates between 1 and 64")
    return rates


def coverage(rates_text: str, kernel: int = 3):
    rates = parse_rates(rates_text)
    cov = stacked_coverage(rates, int(kernel))
    return viz.coverage_figure(cov, rates, int(kernel)), f"Field {cov.shape[0]} px; {holes(cov)} pixels inside it are never touched."


def branch_taps(image, pixel, name: str):
    """The model's branches drawn at ``pixel`` (y, x) of the image as given; None: its centre."""
    prepared = prepare_image(image)
    size = prepared.image.shape[:2]
    pixel = (size[0] // 2, size[1] // 2) if pixel is None else scale_pixel(pixel, prepared.original_size, size)
    branches = model_branches(name)
    legend = ", ".join(f"{b.label} ({'bins' if b.bins else f'every {b.spacing} px'})" for b in branches)
    return viz.taps_image(prepared.image, pixel, branches), legend


def build_tab(gr, user_error):
    from . import png_file, upload_image

    from .. import registry
    from .compare import example_images

    from ..data import voc

    names = [s.name for s in registry.list_models(compact=True) if s.branches()]
    names += [f"{m.name}.voc" for m in voc.catalogue() if m.name.startswith("deeplabv3_")]
    with gr.Tab("Dilation", id="dilation"):
        with gr.Row():
            with gr.Column():
                gr.Markdown("**Stacked dilated convolutions.** Rates 2, 2, 2 leave holes (gridding); "
                            "1, 2, 5 cover every pixel.")
                rates = gr.Textbox("2, 2, 2", label="Rates, first layer first", elem_id="rates")
                kernel = gr.Slider(1, 7, value=3, step=2, label="Kernel size")
                show = gr.Button("Draw coverage")
                fig = gr.Plot()
                summary = gr.Markdown()
            with gr.Column():
                gr.Markdown("**A model's own branches** at a clicked pixel, at the right scale "
                            "(feature stride x rate), one colour per branch.")
                image = upload_image(gr, label="Image (click a pixel)", elem_id="dilation-image")
                examples = example_images()
                if examples:
                    gr.Examples(examples[:3], inputs=image)
                pixel = gr.State(None)  # (y, x) of the last click on this image; None: the centre
                model = gr.Dropdown(names, value=names[0] if names else None, label="Model")
                draw = gr.Button("Draw branches", variant="primary")
                taps_out = gr.Image(label="Sampling positions", format="png")
                legend = gr.Markdown()

        def on_coverage(rates, kernel):
            with user_error():
                return coverage(rates, kernel)

        def on_taps(image, pixel, model):
            with user_error():
                taps, legend = branch_taps(image, tuple(pixel) if pixel is not None else None, model)
                return png_file(taps), legend

        def on_select(evt: gr.SelectData):
            x, y = evt.index
            return (y, x)

        show.click(on_coverage, [rates, kernel], [fig, summary], api_name="dilation_coverage")
        image.select(on_select, None, pixel)
        image.upload(lambda: None, None, pixel, api_name=False)  # a new image: back to its centre
        draw.click(on_taps, [image, pixel, model], [taps_out, legend], api_name="dilation_taps")
