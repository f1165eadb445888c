"""Models tab: every architecture with its paper, the review's VOC score and what we measured."""
from __future__ import annotations

import json
from pathlib import Path

from .. import PROJECT_ROOT, records, registry

BENCH_FILE = PROJECT_ROOT / "assets" / "bench.json"

HEADERS = ["model", "trained on", "paper", "year", "arXiv", "key idea", "VOC12 test mIoU (review)", "params (M)",
           "val mIoU (ours)", "held-out sequence mIoU (ours)", "latency 360x480 CPU (ms)"]


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


def model_rows() -> list[list]:
    """One row per trained model (every record), then the compact architectures not trained yet."""
    latency = {}
    if BENCH_FILE.exists():
        latency = {r["name"]: r["ms"] for r in json.loads(BENCH_FILE.read_text())["models"]}
    rows, trained = [], set()
    for r in records.all_records():
        spec = r.spec
        trained.add(r.network)
        m = r.metrics
        held = m.get("heldout", {})
        rows.append([r.name, r.dataset.name, spec.paper if spec else r.title, spec.year if spec else "",
                     f"[{spec.arxiv}]({spec.arxiv_url})" if spec else "", spec.key_idea if spec else r.note,
                     (spec.voc12_miou or "") if spec else "",
                     round(m["num_params"] / 1e6, 2) if "num_params" in m else "",
                     m.get("val_miou", ""), f"{held['miou']} ({held['split']})" if held else "",
                     latency.get(r.network, "")])
    for s in registry.list_models(compact=True):
        if s.name not in trained:
            rows.append([s.name, "not trained yet", s.paper, s.year, f"[{s.arxiv}]({s.arxiv_url})", s.key_idea,
                         s.voc12_miou or "", round(registry.count_params(registry.build(s.name, num_classes=11)) / 1e6, 2),
                         "", "", latency.get(s.name, "")])
    return rows


def build_tab(gr):
    with gr.Tab("Models", id="models"):
        gr.Markdown("Every trained model: the compact (EfficientNet-Lite0) configuration of each architecture, "
                    "trained on CamVid here, and the PASCAL VOC models trained by others. VOC12 scores are the PASCAL VOC 2012 test mIoU the 2017 review quotes for the papers' own models; "
                    "latency comes from `python -m segviz bench` (assets/bench.json).")
        return gr.HTML(models_html(), elem_id="models-table")
