"""Compare tab: every selected architecture on one image, side by side.

The handlers are plain functions (file paths / numpy in, numpy / figures / text out); only
``build_tab`` touches gradio. (No ``from __future__ import annotations`` here: Gradio reads the handlers'
``gr.SelectData`` annotations at run time.)
"""

import contextlib
import dataclasses
import math
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import env_number, viz
from .. import records
from ..compare import (Comparison, classes_at, compare, comparison_card, crf_views, file_identity, load, metrics_table,
                       overlay_title, overlays, resolve, shows, titles)
from ..preprocess import LabelsNotInSet, prepare_image, prepare_mask, whole_number


@dataclass
class CompareView:
    comparison: Comparison
    notes: list[str]
    alpha: float
    files: dict  # "input", "ground_truth": the uploaded files' names and sha256s (for the card)


class Stopwatch:
    """Seconds one request spent per stage (``with clock("models"): ...`` adds up); ``str`` is the line the
    tab shows under the results."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start

    def __str__(self) -> str:
        return "Time on the server: " + " · ".join(f"{k} {v:.2f} s" for k, v in self.seconds.items())


def example_images(limit: int = 6) -> list[str]:
    """Frames of CamVid's test split when the data folder has it (no model here trains on it), else of val."""
    from ..data.camvid import default_root, looking_split, read_split

    try:
        pairs = read_split(default_root(), looking_split())
    except FileNotFoundError:
        return []
    step = max(1, len(pairs) // limit)
    return [str(img) for img, _ in pairs[::step][:limit]]


def examples_label(paths: list[str]) -> str:
    """'CamVid <split> frames', and which CamVid models trained on some of them (they look better there
    than on a new frame)."""
    from ..data.camvid import default_root
    from ..review import training_frames

    root, names = default_root(), {Path(p).name for p in paths}
    every = records.records("camvid")
    trained = [r.short for r in every if names & (training_frames(r, root) or set())]
    label = f"CamVid {Path(paths[0]).parent.name} frames"
    if trained and len(trained) == len(every):
        return label + " (every CamVid model here trained on them)"
    return label + (f" (trained on by {', '.join(trained)})" if trained else "")


def model_choices(dataset: str) -> tuple[list[tuple[str, str]], str]:
    """(label, record name) of the models of ``dataset`` that can run, and a line naming those
    that cannot (and why)."""
    every = [(r, r.missing()) for r in records.records(dataset)]
    ready = [(f"{r.title} · {r.network}" if not r.trained_here else r.title, r.name) for r, why in every if why is None]
    waiting = [f"{r.name} ({why})" for r, why in every if why is not None]
    return ready, ("Not available: " + ", ".join(waiting)) if waiting else ""


def ready_names(dataset: str) -> list[str]:
    return [name for _, name in model_choices(dataset)[0]]


def dataset_choices() -> list[tuple[str, str]]:
    return [(d.short, name) for name, d in records.datasets().items()]


def crf_settings(enabled: bool, iterations=5, gaussian_sxy=3.0, gaussian_compat=3.0, bilateral_sxy=80.0,
                 bilateral_srgb=13.0, bilateral_compat=10.0, scale=1.0):
    """The CRF controls -> CRFParams (checked), or None when the CRF is off."""
    if not enabled:
        return None
    from ..crf import AVAILABLE, INSTALL_HINT, CRFParams

    if not AVAILABLE:
        raise ValueError(INSTALL_HINT)
    return CRFParams(whole_number(iterations, "CRF iterations"), float(gaussian_sxy), float(gaussian_compat), float(bilateral_sxy),
                     float(bilateral_srgb), float(bilateral_compat), float(scale)).check()


# Per request, the dense CRF may do at most this many pixel-iterations summed over the models (pixels at
# the CRF's working scale x iterations x models); larger requests run at a lower working scale.
CRF_BUDGET = int(env_number("SEGVIZ_CRF_BUDGET", 20e6, whole=False))
MIN_CRF_SCALE = 0.25


def crf_within_budget(crf, size: tuple[int, int], models: int, budget: int | None = None):
    """``crf`` unchanged when its cost fits ``budget`` pixel-iterations, else the same settings at the working
    scale that fits (and a note saying so); a request that does not fit even at the lowest scale is refused."""
    budget = CRF_BUDGET if budget is None else budget
    if crf is None:
        return None, None
    pixels = size[0] * size[1]
    work = pixels * crf.scale ** 2 * crf.iterations * models
    if work <= budget:
        return crf, None
    scale = math.floor(math.sqrt(budget / (pixels * crf.iterations * models)) * 20) / 20  # steps of 0.05
    if scale < MIN_CRF_SCALE:
        raise ValueError(f"the dense CRF with {crf.iterations} iterations on {models} models of a {size[1]}x{size[0]} "
                         f"image is over this server's budget; use fewer iterations or models, or a smaller image")
    return (dataclasses.replace(crf, scale=scale),
            f"dense CRF run at working scale {scale:.2f} instead of {crf.scale:.2f} to stay within this server's budget")


def loadable(names: list[str]) -> tuple[list[str], list[str]]:
    """The record names whose weights load (sha256-checked), and one note per model that does not.

    One tampered or unreadable file costs that model, not the whole comparison; if none loads, the
    first model's error is raised."""
    from ..weights import WeightsError

    ok, broken, first = [], [], None
    for r in resolve(list(names)):
        try:
            load(r.name)
        except WeightsError as e:
            first = first or e
            broken.append(f"{r.name} not run: {_basename_paths(str(e))}")
            continue
        ok.append(r.name)
    if not ok and first is not None:
        raise WeightsError(_basename_paths(str(first)))
    return ok, broken


def _basename_paths(message: str) -> str:
    """Server paths in a message reduced to their file names."""
    import re

    return re.sub(r"(?:/[^\s/'\"]+)+/([^\s/'\"]+)", r"\1", message)


def run_compare(image, names: list[str], alpha: float, gt=None, progress=None, crf=None, drawn=None,
                input_scale: float | None = None) -> dict:
    """Everything the Compare tab shows for one click of Run (``names``: record names of one label
    set; ``crf``: CRFParams or None; ``input_scale``: :func:`input_scale_of`'s). Stateless: the names alone
    say which models and label set.
    ``drawn``: the overlays already streamed to the page, as (file, title) in the models' order; used
    as they are when they show the same thing (no CRF), instead of being drawn again."""
    if not names:
        raise ValueError("select at least one model")
    prepared = prepare_image(image)
    notes = list(prepared.notes)
    names, broken = loadable(names)
    notes += broken
    crf, scaled = crf_within_budget(crf, prepared.image.shape[:2], len(names))
    if scaled:
        notes.append(scaled)
    chosen = resolve(list(names))
    labelset = chosen[0].labels
    mask = None
    if gt is not None:
        try:
            mask = prepare_mask(gt, prepared.image.shape[:2], labelset.num_classes, labelset.ignore_index,
                                prepared.original_size)
        except LabelsNotInSet as e:  # the predictions are still worth showing
            notes.append(f"ground truth not scored: {e}; is it a {chosen[0].dataset.short} label map?")
    c = compare(prepared.image, list(names), mask, progress, crf_params=crf, input_scale=input_scale)
    maps = c.shown()
    shorts = [r.short for r in c.records]
    present = set(np.unique(np.stack(maps)).tolist())
    files = {"input": file_identity(image), "ground_truth": file_identity(gt) if mask is not None else None}
    result = {
        "view": CompareView(c, notes, alpha, files),
        "overlays": drawn if drawn and not c.refined and [t for _, t in drawn] == titles(c) else overlays(c, alpha),
        "legend": viz.legend_html(labelset, present),
        "disagreement": viz.disagreement_image(maps),
        "agreement": viz.agreement_figure(viz.agreement_matrix(maps), shorts),
        "shares": viz.class_share_figure(viz.class_shares(maps, labelset.num_classes), shorts, labelset),
        "errors": [(viz.error_map(labels, mask, labelset.ignore_index), short)
                   for short, labels in zip(shorts, maps)] if mask is not None else [],
        "crf": crf_views(c, alpha),
        "metrics": metrics_table(c) if mask is not None else (["model"], []),
        "notes": notes,
    }
    return result


def stream_predictions(image: np.ndarray, names: list[str], keep_probs: bool = False,
                       input_scale: float | None = None):
    """Yield (record, prediction) model by model: the Compare tab shows each overlay as it is ready
    (the predictions are cached, so the full comparison that follows does not run them again)."""
    from ..compare import predict_one
    from ..evaluate import ModelInput

    inputs = ModelInput(image)
    for r in resolve(list(names)):
        yield r, predict_one(r.name, image, keep_probs=keep_probs, inputs=inputs, input_scale=input_scale)


def predictions_ahead(image: np.ndarray, names: list[str], keep_probs: bool, clock: Stopwatch,
                      input_scale: float | None = None):
    """:func:`stream_predictions` with the models on :func:`segviz.inference.model_thread`, so that the next
    model runs while the caller colours and sends the last overlay (``clock``'s "models" counts that thread's time).
    Closing the generator (a cancelled run) stops the models after the one running."""
    ready, stop = queue.Queue(), threading.Event()

    def produce():
        try:
            stream = stream_predictions(image, names, keep_probs, input_scale)
            while not stop.is_set():
                with clock("models"):
                    item = next(stream, None)
                ready.put(item)
                if item is None:
                    return
        except BaseException as e:  # handed to the caller, which raises it in the request
            ready.put(e)

    from ..inference import model_thread

    model_thread().submit(produce)
    try:
        while (item := ready.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


# The Compare tab's choice of network input: each model's own factor (the bundled CamVid models enlarge a frame 2x,
# chosen on the held-out drive), or one factor for all of them. Up to x2, where a 360x480 frame reaches the 1024 px
# working-size cap (a larger factor would run at about 2.13).
OWN_SCALE = "own"
INPUT_SCALE_CHOICES = [("each model's own", OWN_SCALE), ("x0.5", "0.5"), ("x1: the image's size", "1"),
                       ("x1.5", "1.5"), ("x2", "2")]


def input_scale_of(choice) -> float | None:
    """The Compare tab's input-scale choice as :func:`segviz.compare.compare` takes it: None for each model's
    own factor, else the factor (0.25 to 4; API clients may send any such number)."""
    from ..preprocess import check_input_scale

    return None if choice in (None, "", OWN_SCALE) else check_input_scale(choice)


def restyle(view: CompareView | None, alpha: float) -> list:
    if view is None:
        return []
    view.alpha = alpha
    return overlays(view.comparison, alpha)


def export_card(view: CompareView | None) -> str:
    """Write the comparison card zip and return its path."""
    if view is None:
        raise ValueError("run a comparison first")
    from . import output_file

    data = comparison_card(view.comparison, view.alpha, {"notes": view.notes}, view.files)
    return output_file(data, ".zip", prefix="segviz-card-")


# ----------------------------------------------------------------------------- layout
def crf_panel(gr, model_set: str) -> list:
    """The dense CRF checkbox and its parameters at ``model_set``'s preset (the set the page opens with; choosing
    another one sets its own, :func:`crf_values`); disabled, with the reason, without pydensecrf."""
    from ..crf import AVAILABLE, INSTALL_HINT, preset

    d = preset(model_set)
    with gr.Accordion("Dense CRF (DeepLab v1/v2 post-processing)", open=False):
        if not AVAILABLE:
            gr.Markdown(f"Unavailable: {INSTALL_HINT}.")
        else:
            gr.Markdown("Parameters start at the chosen model set's: for CamVid, tuned on a drive the models never "
                        "saw; otherwise pydensecrf's defaults.")
        use = gr.Checkbox(False, label="Apply the dense CRF to every model", interactive=AVAILABLE, elem_id="crf-on")
        return [use,
                gr.Slider(1, 20, value=d.iterations, step=1, label="Iterations"),
                gr.Slider(1, 20, value=d.gaussian_sxy, step=0.5, label="Gaussian sxy (px)"),
                gr.Slider(0, 20, value=d.gaussian_compat, step=0.5, label="Gaussian compat"),
                gr.Slider(5, 200, value=d.bilateral_sxy, step=5, label="Bilateral sxy (px)"),
                gr.Slider(1, 50, value=d.bilateral_srgb, step=1, label="Bilateral srgb"),
                gr.Slider(0, 30, value=d.bilateral_compat, step=0.5, label="Bilateral compat"),
                gr.Slider(0.25, 1, value=d.scale, step=0.05, label="Working scale (lower is faster)")]


def crf_values(model_set: str) -> list[float]:
    """The CRF sliders' values for a model set (iterations, Gaussian sxy and compat, bilateral sxy, srgb and
    compat; the working scale stays as the user set it)."""
    from ..crf import preset

    p = preset(model_set)
    return [p.iterations, p.gaussian_sxy, p.gaussian_compat, p.bilateral_sxy, p.bilateral_srgb, p.bilateral_compat]


def build_tab(gr, user_error):
    """The Compare tab's widgets and events. ``user_error`` turns bad input into a UI message."""
    from . import gallery_files, png_file, upload_image
    from ..preprocess import check_pixel

    ready, waiting = model_choices("camvid")
    # Every ready model of every set is a valid choice, so that an API call works from a fresh client whatever
    # the radio shows (the page narrows the boxes to one set when it loads).
    every = [choice for d in records.datasets() for choice in model_choices(d)[0]]
    with gr.Tab("Compare", id="compare"):
        view = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                image = upload_image(gr, label="Image", elem_id="input-image")
                examples = example_images()
                if examples:
                    gr.Examples(examples, inputs=image, label=examples_label(examples))
                model_set = gr.Radio(dataset_choices(), value="camvid", label="Model set (label set)",
                                     elem_id="model-set")
                names = gr.CheckboxGroup(every, value=[n for _, n in ready], label="Architectures",
                                         elem_id="architectures")
                unavailable = gr.Markdown(waiting)
                with gr.Row():
                    run = gr.Button("Run all", variant="primary", elem_id="run")
                    cancel = gr.Button("Cancel", elem_id="cancel")
                alpha = gr.Slider(0, 1, value=0.6, step=0.05, label="Mask opacity", elem_id="opacity")
                input_scale = gr.Radio(INPUT_SCALE_CHOICES, value=OWN_SCALE, label="Network input size",
                                       info="Each network runs on the image resized by this factor; its labels "
                                            "come back at the image's size. The CamVid models' own is x2.",
                                       elem_id="input-scale")
                gt = gr.File(label="Ground-truth label PNG (optional, class ids per pixel; scored on upload)",
                             file_types=[".png"], type="filepath", elem_id="ground-truth")
                crf_controls = crf_panel(gr, model_set.value)
            with gr.Column(scale=2):
                notes = gr.Markdown(elem_id="notes")
                # Four columns, 620 px high: twelve 360x480 overlays fit a 1440x1000 window without an inner scroll
                # (an automatic height caps the gallery at 55% of the window).
                gallery = gr.Gallery(label="Predictions (select one to read its pixels below)", columns=4,
                                     height=620, object_fit="contain", format="png", elem_id="overlays")
                legend = gr.HTML(elem_id="legend")
                with gr.Tab("Pixel classes"):
                    with gr.Row():
                        probe = gr.Image(label="Click a pixel: each model's class there", interactive=False,
                                         elem_id="probe")
                        readout = gr.Dataframe(headers=["model", "class"], interactive=False, elem_id="readout",
                                               label="Classes at the clicked pixel")
                with gr.Tab("Disagreement"):
                    with gr.Row():
                        disagreement = gr.Image(label="Models disagreeing with the majority (dark = all agree)",
                                                elem_id="disagreement")
                        agreement = gr.Plot(label="Pairwise agreement (% of pixels)", elem_id="agreement")
                with gr.Tab("Class shares"):
                    shares = gr.Plot(label="Pixel share per class")
                with gr.Tab("Dense CRF"):
                    crf_model = gr.Dropdown([], label="Model", elem_id="crf-model")
                    crf_slider = gr.ImageSlider(label="Before (left) / after (right) the CRF: drag the handle",
                                                type="numpy", elem_id="crf-slider")
                    crf_changed = gr.Gallery(label="Pixels the CRF changed (magenta)", columns=3, height="auto",
                                             format="png")
                with gr.Tab("Ground truth"):
                    errors = gr.Gallery(label="Errors: green right, red wrong, grey ignored", columns=3, height="auto",
                                        format="png", elem_id="errors")
                    metrics = gr.Dataframe(label="Per-image scores (%)", interactive=False)
                with gr.Row():
                    export = gr.Button("Export comparison card")
                    card = gr.File(label="Comparison card (.zip)")

        outputs = [view, gallery, legend, notes, disagreement, agreement, shares, errors, metrics, crf_model,
                   crf_slider, crf_changed, probe, readout, card]

        def cleared():
            """What a new run starts from: nothing of the last one stays on screen (nor after an error)."""
            return [None, [], "", "", None, None, None, [], gr.Dataframe(value=[], headers=["model"]),
                    gr.Dropdown(choices=[], value=None), None, [], None,
                    gr.Dataframe(value=[], headers=["model", "class"]), None]

        def shown(r):
            """The outputs of a finished comparison (``run_compare``'s result)."""
            header, rows = r["metrics"]
            crf_names = list(r["crf"])
            first = r["crf"][crf_names[0]] if crf_names else None
            changed = [(v["changed"], f"{n} · {v['changed_share'] * 100:.1f}% changed") for n, v in r["crf"].items()]
            return [r["view"], gallery_files(r["overlays"]), r["legend"], " · ".join(r["notes"]),
                    png_file(r["disagreement"]), r["agreement"], r["shares"], gallery_files(r["errors"]),
                    gr.Dataframe(value=rows, headers=header),
                    gr.Dropdown(choices=crf_names, value=crf_names[0] if crf_names else None),
                    (png_file(first["before"]), png_file(first["after"])) if first else None, gallery_files(changed),
                    png_file(r["overlays"][0][0]), gr.Dataframe(value=[], headers=["model", "class"]), None]

        def on_run(image, names, alpha, gt, use_crf, *crf_values_and_scale, progress=gr.Progress()):
            """A generator: each overlay appears as its model finishes, then everything else at once
            (API clients get the final outputs only)."""
            yield cleared()
            clock = Stopwatch()
            *crf_values, scale_choice = crf_values_and_scale
            with user_error():
                crf = crf_settings(use_crf, *crf_values)
                scale = input_scale_of(scale_choice)
                if not names:
                    raise ValueError("select at least one model")
                with clock("decode"):
                    working = prepare_image(image).image
                ready, _ = loadable(names)
            tiles = []
            skip = [gr.skip()] * (len(outputs) - 2)
            with user_error():
                for i, (r, p) in enumerate(predictions_ahead(working, ready, crf is not None, clock, scale)):
                    progress(i / len(ready), desc=f"ran {r.short}")
                    with clock("colouring"):
                        tiles.append((png_file(viz.overlay(working, p.labels, r.labels, alpha)), overlay_title(r, p)))
                    yield [gr.skip(), list(tiles)] + skip
            with user_error(), clock("figures"):
                out = shown(run_compare(image, names, alpha, gt, progress=lambda f, msg: progress(f, desc=msg), crf=crf,
                                        drawn=tiles, input_scale=scale))
            out[outputs.index(notes)] += f"\n\n<small>{clock}</small>"
            yield out

        def on_ground_truth(view, image, gt):
            """Score the last comparison against a newly uploaded (or removed) ground truth: the predictions
            (and CRFs) are cached, so nothing runs again."""
            if view is None:
                return [gr.skip()] * len(outputs)
            with user_error():
                c = view.comparison
                if not shows(c, image):
                    gr.Info("The image changed since the last Run: press Run all to compare it.")
                    return [gr.skip()] * len(outputs)
                return shown(run_compare(image, c.names, view.alpha, gt, crf=c.crf_params, input_scale=c.input_scale))

        def on_crf_model(view, name):
            if view is None or not name:
                return None
            v = crf_views(view.comparison, view.alpha).get(name)
            return (png_file(v["before"]), png_file(v["after"])) if v else None

        def on_restyle(view, alpha):
            return gallery_files(restyle(view, alpha))

        def on_pick(view, evt: gr.SelectData):
            """A selected overlay becomes the one whose pixels are read."""
            if view is None:
                return None
            c = view.comparison
            return png_file(viz.overlay(c.image, c.shown()[evt.index], c.labels, view.alpha))

        def on_probe(view, evt: gr.SelectData):
            if view is None:
                return gr.skip()
            with user_error():
                x, y = check_pixel(evt.index)  # Gradio sends [x, y] of the working image shown
                return gr.Dataframe(value=classes_at(view.comparison, (y, x)),
                                    headers=["model", f"class at (y={y}, x={x})"])

        def on_model_set(model_set):
            ready, waiting = model_choices(model_set)
            return gr.CheckboxGroup(choices=ready, value=[n for _, n in ready]), waiting, *crf_values(model_set)

        def on_export(view):
            with user_error():
                return export_card(view)

        running = run.click(on_run, [image, names, alpha, gt, *crf_controls, input_scale], outputs,
                            api_name="compare", concurrency_limit=1)
        gt.change(on_ground_truth, [view, image, gt], outputs, api_name=False, concurrency_limit=1)
        crf_model.change(on_crf_model, [view, crf_model], crf_slider, api_name=False)
        cancel.click(None, None, None, cancels=[running], api_name=False)
        alpha.release(on_restyle, [view, alpha], gallery, api_name="restyle")
        gallery.select(on_pick, view, probe, api_name=False)
        probe.select(on_probe, view, readout, api_name=False)
        set_outputs = [names, unavailable, *crf_controls[1:-1]]
        model_set.change(on_model_set, model_set, set_outputs, api_name="model_set")
        export.click(on_export, view, card, api_name="export_card")
    return on_model_set, model_set, set_outputs, (image, gt, model_set)
