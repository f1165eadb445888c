"""Models tab: every architecture with its paper, the review's VOC score and what we measured."""
from __future__ import annotations

import json

from .. import PROJECT_ROOT, records, registry

BENCH_FILE = PROJECT_ROOT / "assets" / "bench.json"
# `python -m segviz models --json --field 360x480 > assets/models.json`: parameters and traced fields of every
# registered configuration (tracing the VGG/ResNet ones takes minutes, so the tab reads them from here).
MODELS_FILE = PROJECT_ROOT / "assets" / "models.json"

HEADERS = ["model", "trained on", "paper", "year", "arXiv", "key idea", "VOC12 test mIoU (review)", "params (M)",
           "output stride", "theoretical field at 360x480", "input scale", "val mIoU (ours)",
           "held-out sequence mIoU (ours)", "latency 360x480 CPU (ms)"]


def models_html() -> str:
    """The table as HTML (a Dataframe in a hidden tab renders badly)."""
    import html

    head = "".join(f"<th>{html.escape(h)}</th>" for h in HEADERS)
    body = []
    for row in model_rows():
        cells = []
        for i, v in enumerate(row):
            if i == 4 and v:  # arXiv: a markdown link [id](url)
                arxiv, url = v[1:].split("](")
                cells.append(f'<td><a href="{html.escape(url[:-1])}" target="_blank">{html.escape(arxiv)}</a></td>')
            else:
                cells.append(f"<td>{html.escape(str(v))}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return (f'<table class="segviz-models" style="font-size:0.9em"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def _field(info: dict) -> str:
    f = info.get("theoretical_field")
    if not f:
        return ""
    size = f"{f['size'][0]} x {f['size'][1]} px"
    return f"whole image (local path {size})" if f["whole_image"] else size


def model_rows() -> list[list]:
    """One row per trained model (every record), then every registered configuration without
    weights: the compact ones not trained yet and the paper-faithful ones (VGG16, ResNet, U-Net)."""
    latency = {}
    if BENCH_FILE.exists():
        latency = {r["name"]: r["ms"] for r in json.loads(BENCH_FILE.read_text())["models"]}
    configs = {r["name"]: r for r in json.loads(MODELS_FILE.read_text())} if MODELS_FILE.exists() else {}
    rows, trained = [], set()
    for r in records.all_records():
        spec = r.spec
        trained.add(r.network)
        m, info = r.metrics, configs.get(r.network, {})
        held = m.get("heldout", {})
        rows.append([r.name, r.dataset.name, spec.paper if spec else r.title, spec.year if spec else "",
                     f"[{spec.arxiv}]({spec.arxiv_url})" if spec else "", spec.key_idea if spec else r.note,
                     (spec.voc12_miou or "") if spec else "",
                     round(m["num_params"] / 1e6, 2) if "num_params" in m else "",
                     spec.output_stride if spec else "", _field(info), f"x{r.input_scale:g}",
                     r.val_miou, f"{held['miou']} ({held['split']})" if held else "",
                     latency.get(r.network, "")])
    for s in registry.list_models():
        if s.name in trained:
            continue
        info = configs.get(s.name, {})
        params = info.get("params") or registry.count_params(registry.build(s.name, num_classes=21))
        kind = ("not trained yet" if s.compact else "trial backbone (not bundled)" if s.trial
                else "paper-faithful configuration (no weights)")
        rows.append([s.name, kind,
                     s.paper, s.year, f"[{s.arxiv}]({s.arxiv_url})", s.key_idea, s.voc12_miou or "",
                     round(params / 1e6, 2), s.output_stride, _field(info), "", "", "", latency.get(s.name, "")])
    return rows


def build_tab(gr):
    with gr.Tab("Models", id="models"):
        gr.Markdown("Every trained model (the compact MobileNet-EdgeTPU configurations trained on CamVid here, the "
                    "PASCAL VOC models trained by others), then every configuration without weights, the "
                    "paper-faithful VGG16/ResNet ones included (parameters for 21 classes). VOC12 scores are the PASCAL VOC 2012 test mIoU the 2017 review quotes for the papers' own models; "
                    "input scale: how many times a model enlarges an image before its forward, chosen on the held-out sequence; "
                    "latency comes from `python -m segviz bench` (assets/bench.json), the network alone at 360x480.")
        return gr.HTML(models_html(), elem_id="models-table")
