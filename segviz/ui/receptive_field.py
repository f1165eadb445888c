"""Receptive field tab: click a pixel, see each model's theoretical field (box) and effective
field (gradient heatmap). Handlers are plain functions; only ``build_tab`` touches gradio."""

from .. import records, registry, viz
from ..preprocess import check_pixel, prepare_image
from ..receptive_field import HEADERS, erf_grid, field_by_depth

# Paper-faithful configurations shown in the depth plot by default: pooling (FCN), dilation (DeepLab v1,
# Dilation), ASPP (DeepLab v2) and global pooling (PSPNet, DeepLab v3).
DEPTH_DEFAULT = ["fcn8s_vgg16", "dilation8_vgg16", "deeplabv1_vgg16", "deeplabv2_resnet101", "pspnet_resnet50",
                 "deeplabv3_resnet101"]


def faithful_choices() -> list[tuple[str, str]]:
    return [(f"{s.short} ({s.backbone})", s.name) for s in registry.list_models(compact=False) if not s.trial]


def depth_figure(image, names: list[str], faithful: list[str]):
    """Theoretical field against depth for the selected models (records) and paper-faithful configurations
    (registry keys, no weights needed), traced at the image's working size (a 360x480 frame without one)."""
    size = prepare_image(image).image.shape[:2] if image is not None else (360, 480)
    titles = {n: records.get(n).short for n in names or [] if records.get(n).trained_here}  # foreign ports: skipped
    titles.update({n: f"{registry.get_spec(n).short} ({registry.get_spec(n).backbone})" for n in faithful or []})
    if not titles:
        raise ValueError("select at least one CamVid model or paper-faithful configuration for the plot "
                         "(the ported VOC networks are not traced layer by layer)")
    return viz.field_depth_figure({title: field_by_depth(n, size) for n, title in titles.items()}, size)


def build_tab(gr, user_error):
    from . import gallery_files, upload_image

    from .compare import dataset_choices, example_images, model_choices

    ready, _ = model_choices("camvid")
    every = [choice for d in records.datasets() for choice in model_choices(d)[0]]  # valid from any fresh client
    with gr.Tab("Receptive field", id="receptive-field"):
        gr.Markdown("Click a pixel. Each tile shows the **effective receptive field** (|d logit / d input|, "
                    "Luo et al. 2016) as a heatmap and the **theoretical field** as a cyan box: the effective "
                    "field is far smaller. A dashed side means the field goes on past the image; no box means the field "
                    "is the whole image (global pooling). The plot below shows how each architecture grows its "
                    "theoretical field layer by layer.")
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
                                  object_fit="contain", format="png", elem_id="rf-grid")
                table = gr.Dataframe(headers=HEADERS, interactive=False)
                faithful = gr.CheckboxGroup(faithful_choices(), value=DEPTH_DEFAULT, elem_id="rf-faithful",
                                            label="Paper-faithful configurations in the plot (no weights needed)")
                depth = gr.Plot(label="Theoretical field against depth", elem_id="rf-depth")

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

        def on_depth(image, names, faithful):
            with user_error():
                return depth_figure(image, names, faithful)

        image.select(on_select, None, [pixel, where])
        image.upload(lambda: (None, "Pixel: the centre (click the image to choose one)"), None, [pixel, where],
                     api_name=False)
        run.click(on_run, [image, pixel, names, cls, random], [grid, table], api_name="receptive_field",
                  concurrency_limit=1).success(on_depth, [image, names, faithful], depth, api_name="field_depth")
        model_set.change(on_model_set, model_set, [names, cls], api_name=False)
    return on_model_set, model_set, [names, cls]
