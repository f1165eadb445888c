"""Review tab: every model over a whole labelled set (segviz.review), its leaderboard, per-class IoU,
confusion matrices, trimap curves and a gallery of frames ranked by how badly they fail; a frame
clicked opens in Compare with its ground truth.

The handlers are plain functions; only ``build_tab`` touches gradio. Each handler reopens the review
from its database (the rows are there after the first run: reading them back takes milliseconds).
"""
import os
import shutil
import tempfile
import threading
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from .. import review, viz
from ..weights import sha256_file
from . import KEEP_OUTPUTS_S, prune_older

MAX_UNZIPPED = 500 << 20  # bytes an uploaded zip may expand to
UNPACKED = Path(tempfile.gettempdir()) / "segviz-review"  # one folder per uploaded zip, removed after KEEP_OUTPUTS_S unused
GALLERY_SIZE = 24
RANK_CHOICES = [("lowest per-image mIoU of the model", "miou"), ("disagreement between the models", "disagreement"),
                ("the model's error on one class", "class")]


@dataclass(frozen=True)
class Query:
    """What to review: a CamVid split, or a folder of images and labels (an unpacked upload)."""

    dataset: str
    split: str
    folder: tuple[str, str] | None  # (images, labels)
    models: tuple[str, ...]
    crf: bool
    limit: int | None

    def source(self) -> review.Source:
        if self.folder is not None:
            unpacked = Path(self.folder[0]).parent
            if not unpacked.is_dir():
                raise ValueError(f"the uploaded zip's files were removed after {KEEP_OUTPUTS_S // 60} minutes "
                                 f"unused; upload it again")
            os.utime(unpacked)  # in use: not removed for another KEEP_OUTPUTS_S
            return review.folder_source(*self.folder, self.dataset, self.limit)
        if self.dataset != "camvid":
            raise ValueError(f"upload a zip of images/ and labels/ to review {self.dataset} models")
        return review.camvid_source(None, self.split, self.limit)


def unpack(upload: str) -> tuple[str, str]:
    """An uploaded zip with an ``images/`` and a ``labels/`` folder (at any depth) -> the two unpacked folders."""
    try:
        archive = zipfile.ZipFile(upload)
    except (zipfile.BadZipFile, OSError):
        raise ValueError("the upload is not a zip file; zip a folder images/ and a folder labels/") from None
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        if sum(m.file_size for m in members) > MAX_UNZIPPED:
            raise ValueError(f"the zip expands to more than {MAX_UNZIPPED >> 20} MB")
        folders = {}
        for m in members:
            parts = Path(m.filename).parts
            if len(parts) >= 2 and parts[-2] in ("images", "labels") and ".." not in parts and not parts[0].startswith("/"):
                folders.setdefault(parts[-2], []).append(m)
        if set(folders) != {"images", "labels"}:
            raise ValueError("the zip needs a folder images/ and a folder labels/ (label PNGs with the images' stems)")
        # one folder per distinct upload (a second run of the same zip reuses it), each file written atomically;
        # folders unused for KEEP_OUTPUTS_S are removed
        UNPACKED.mkdir(exist_ok=True)
        prune_older(str(UNPACKED), KEEP_OUTPUTS_S)
        dest = UNPACKED / sha256_file(upload)[:16]
        try:
            for kind, entries in folders.items():
                (dest / kind).mkdir(parents=True, exist_ok=True)
                for m in entries:
                    try:
                        data = archive.read(m)
                    except (zipfile.BadZipFile, zlib.error, RuntimeError, EOFError, NotImplementedError) as e:
                        raise ValueError(f"the zip is damaged or encrypted: {m.filename} cannot be read ({e})") from None
                    fd, part = tempfile.mkstemp(dir=dest / kind)
                    with open(fd, "wb") as f:
                        f.write(data)
                    os.replace(part, dest / kind / Path(m.filename).name)
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)  # nothing half-unpacked is left for a later run to reuse
            raise
        os.utime(dest)
    return str(dest / "images"), str(dest / "labels")


def default_split() -> str:
    """The split the tab opens at: CamVid's test split where the data folder has it (frames no bundled model
    trained on), else val."""
    from ..data.camvid import looking_split

    try:
        return looking_split()
    except FileNotFoundError:
        return "val"


def query(dataset: str, split: str, upload, models, crf: bool, limit) -> Query:
    if not models:
        raise ValueError("select at least one model")
    from ..preprocess import whole_number

    limit = whole_number(limit or 0, "the number of images")
    if limit < 0:
        raise ValueError("the number of images must be 0 (all) or more")
    return Query(dataset, (split or "val").strip(), unpack(upload) if upload else None, tuple(models), bool(crf),
                 limit or None)


def open_review(q: Query, progress=None, cancelled=None) -> review.Review:
    """Run (or read back) the review ``q`` asks for; the caller closes ``result.store``."""
    crf = None
    if q.crf:
        from ..crf import usable_preset

        crf = usable_preset(q.dataset)
    store = review.Store()
    try:
        return review.run(q.source(), list(q.models), store, crf, progress, cancelled)
    except BaseException:
        store.close()
        raise


def summary_line(data: dict) -> str:
    skipped = "".join(f"\n- skipped {s['file']}: {s['reason']}" for s in data["skipped"])
    note = review.trained_on_note(data)
    return (f"**{data['images']} images** of {data['source']}, {len(data['models'])} models"
            f"{' with and without the dense CRF' if data['crf'] else ''}; {data['computed_rows']} predictions "
            f"computed, the rest read from the database.{skipped}" + (f"\n\n**Note:** {note}." if note else ""))


def overview(q: Query, progress=None, cancelled=None) -> dict:
    """Everything the tab shows after Run."""
    r = open_review(q, progress, cancelled)
    try:
        data = review.to_json(r)
    finally:
        r.store.close()
    bands, curves = review.trimap_curves(data)
    return {"summary": summary_line(data), "leaderboard": review.leaderboard(data),
            "classes": review.class_table(data), "trimap": viz.trimap_figure(bands, curves), "data": data}


def confusion(data: dict, model: str):
    m = next((m for m in data["models"] if m["name"] == model), None)
    if m is None:
        raise ValueError(f"{model!r} is not in this review")
    return viz.confusion_figure(m["confusion_matrix"], data["classes"], m["title"])


def frames(q: Query, by: str, model: str | None, class_name: str | None, with_crf: bool = False,
           size: int = GALLERY_SIZE) -> tuple[list[tuple], list[int]]:
    """The ``size`` worst frames by ``by`` as (picture, caption), and their indices in the review: each
    picture is the model's prediction over the frame with the ground truth's outlines."""
    r = open_review(q)
    try:
        model = model or r.models[0].name
        if by in ("miou", "class") and model not in [m.name for m in r.models]:
            raise ValueError(f"{model!r} is not in this review")
        order = review.rank(r, by, model, class_name, with_crf)[:size]
        unit = {"miou": "mIoU", "disagreement": "% disagreeing", "class": f"% {class_name} error"}[by]
        pictures = []
        for index, value in order:
            image, gt = review.load_pair(r.items[index][0], r.source.labels)
            pred = r.prediction(model, with_crf, index)
            shown = value * 100 if by == "disagreement" else value
            pictures.append((viz.outlines(viz.overlay(image, pred, r.source.labels), gt),
                             f"{r.items[index][0].name} · {shown:.1f} {unit}"))
        return pictures, [i for i, _ in order]
    finally:
        r.store.close()


def frame_files(q: Query, index: int) -> tuple[str, str]:
    """One reviewed frame and its label map as new PNG files (for the Compare tab's inputs)."""
    from . import png_file

    r = open_review(q)
    try:
        image, gt = review.load_pair(r.items[index][0], r.source.labels)
    finally:
        r.store.close()
    return png_file(image), png_file(gt)


# Cancel asks the run of its own browser session to stop after the image in hand (the rows so far are kept).
_cancel_requests: set[str] = set()
_cancel_lock = threading.Lock()


def _session(request) -> str:
    return getattr(request, "session_hash", None) or "api"


# ----------------------------------------------------------------------------- layout
def build_tab(gr, user_error, tabs, compare_inputs):
    """The Review tab. ``tabs``: the app's Tabs (a clicked frame switches to Compare); ``compare_inputs``:
    Compare's (image, ground truth, model set) widgets, which a clicked frame fills."""
    from ..records import datasets
    from . import gallery_files
    from .compare import dataset_choices, model_choices

    compare_image, compare_gt, compare_set = compare_inputs
    ready, _ = model_choices("camvid")
    every = [choice for d in datasets() for choice in model_choices(d)[0]]
    classes = list(datasets()["camvid"].labels.classes)
    with gr.Tab("Review", id="review"):
        shown = gr.State([])  # the gallery's frames, as indices into the review
        current = gr.State(None)  # the Query last run
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                model_set = gr.Radio(dataset_choices(), value="camvid", label="Model set (label set)",
                                     elem_id="review-set")
                split = gr.Textbox(default_split(), label="CamVid split",
                                   info="test, val, train, trainval, seq:0006R0, noseq:0006R0",
                                   elem_id="review-split")
                upload = gr.File(label="... or a zip of images/ and labels/ (label PNGs with the images' stems)",
                                 file_types=[".zip"], type="filepath", elem_id="review-upload")
                names = gr.CheckboxGroup(every, value=[n for _, n in ready], label="Models", elem_id="review-models")
                limit = gr.Number(0, precision=0, minimum=0, label="Only the first N images (0: all)",
                                  elem_id="review-limit")
                use_crf = gr.Checkbox(False, label="Also with the dense CRF (the model set's preset)", elem_id="review-crf")
                with gr.Row():
                    run = gr.Button("Review", variant="primary", elem_id="review-run")
                    cancel = gr.Button("Cancel", elem_id="review-cancel")
            with gr.Column(scale=2):
                summary = gr.Markdown(elem_id="review-summary")
                board = gr.Dataframe(label="Leaderboard (%; BF: boundary F-score; click a header to sort)",
                                     interactive=False, elem_id="review-leaderboard")
                per_class = gr.Dataframe(label="IoU per class (%)", interactive=False, elem_id="review-classes")
                with gr.Tab("Frames"):
                    with gr.Row():
                        by = gr.Dropdown(RANK_CHOICES, value="miou", label="Rank frames by", elem_id="review-rank")
                        rank_model = gr.Dropdown([], label="Model", elem_id="review-rank-model")
                        rank_class = gr.Dropdown(classes, value=classes[0], label="Class", elem_id="review-rank-class")
                    gallery = gr.Gallery(label="Worst first: prediction with ground-truth outlines; click a frame to "
                                               "open it in Compare", columns=4, height="auto", format="png",
                                         elem_id="review-gallery")
                with gr.Tab("Confusion matrices"):
                    cm_model = gr.Dropdown([], label="Model", elem_id="review-cm-model")
                    cm_plot = gr.Plot(label="Normalised per true class")
                with gr.Tab("Trimap"):
                    trimap = gr.Plot(label="mIoU of the pixels near ground-truth boundaries", elem_id="review-trimap")

        def on_run(model_set, split, upload, names, use_crf, limit, request: gr.Request,
                   progress=gr.Progress()):
            session = _session(request)
            with _cancel_lock:
                _cancel_requests.discard(session)

            def tell(done, total, name):
                progress(done / total, desc=f"{done} of {total} images ({name})")

            with user_error():
                q = query(model_set, split, upload, names, use_crf, limit)
                try:
                    r = overview(q, tell, lambda: session in _cancel_requests)
                except review.Cancelled as e:
                    raise ValueError(str(e)) from None
            models = [m["name"] for m in r["data"]["models"]]
            pictures, indices = frames(q, "miou", models[0], None)
            header, rows = r["leaderboard"]
            class_header, class_rows = r["classes"]
            return (q, indices, r["summary"], gr.Dataframe(value=rows, headers=header),
                    gr.Dataframe(value=class_rows, headers=class_header), r["trimap"],
                    gr.Dropdown(choices=models, value=models[0]), gr.Dropdown(choices=models, value=models[0]),
                    gr.Dropdown(choices=r["data"]["classes"], value=r["data"]["classes"][0]),
                    confusion(r["data"], models[0]), gallery_files(pictures))

        def on_cancel(request: gr.Request):
            with _cancel_lock:
                _cancel_requests.add(_session(request))

        def on_rank(q, by, model, class_name):
            if q is None:
                return [], []
            with user_error():
                pictures, indices = frames(q, by, model, class_name)
            return indices, gallery_files(pictures)

        def on_cm(q, model):
            if q is None or not model:
                return None
            with user_error():
                r = open_review(q)
                try:
                    return confusion(review.to_json(r), model)
                finally:
                    r.store.close()

        def on_select(q, indices, evt: gr.SelectData):
            if q is None or evt.index is None or evt.index >= len(indices):
                return [gr.skip()] * 4
            with user_error():
                image, gt = frame_files(q, indices[evt.index])
            return image, gt, q.dataset, gr.Tabs(selected="compare")

        def on_model_set(model_set):
            ready, _ = model_choices(model_set)
            return gr.CheckboxGroup(choices=ready, value=[n for _, n in ready])

        running = run.click(on_run, [model_set, split, upload, names, use_crf, limit],
                            [current, shown, summary, board, per_class, trimap, rank_model, cm_model, rank_class,
                             cm_plot, gallery], api_name="review", concurrency_limit=1)
        cancel.click(on_cancel, None, None, cancels=[running], api_name=False)
        for control in (by, rank_model, rank_class):
            control.input(on_rank, [current, by, rank_model, rank_class], [shown, gallery], api_name=False)
        cm_model.input(on_cm, [current, cm_model], cm_plot, api_name=False)
        gallery.select(on_select, [current, shown], [compare_image, compare_gt, compare_set, tabs], api_name=False)
        model_set.change(on_model_set, model_set, names, api_name=False)
    return on_model_set, model_set, names
