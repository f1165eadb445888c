"""Models tab: every architecture with its paper, the review's VOC score and what we measured."""
from __future__ import annotations

import json
from pathlib import Path

from .. import PROJECT_ROOT, registry
from ..weights import read_manifest

BENCH_FILE = PROJECT_ROOT / "assets" / "bench.json"

HEADERS = ["model", "paper", "year", "arXiv", "key idea", "VOC12 test mIoU (review)", "params (M)",
           "CamVid val mIoU (ours)", "latency 360x480 CPU (ms)"]


def models_html() -> str:
    """The table as HTML (a Dataframe in a hidden tab renders badly)."""
    import html

    head = "".join(f"<th>{html.escape(h)}</th>" for h in HEADERS)
    body = []
    for row in model_rows():
        cells = []
        for i, v in enumerate(row):
            if i == 3:  # arXiv: a markdown link [id](url)
                arxiv, url = v[1:].split("](")
                cells.append(f'<td><a href="{html.escape(url[:-1])}" target="_blank">{html.escape(arxiv)}</a></td>')
            else:
                cells.append(f"<td>{html.escape(str(v))}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return (f'<table class="segviz-models" style="font-size:0.9em"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def model_rows() -> list[list]:
    manifest = read_manifest()
    latency = {}
    if BENCH_FILE.exists():
        latency = {r["name"]: r["ms"] for r in json.loads(BENCH_FILE.read_text())["models"]}
    rows = []
    for s in registry.list_models(compact=True):
        entry = manifest.get(s.name, {})
        rows.append([s.name, s.paper, s.year, f"[{s.arxiv}]({s.arxiv_url})", s.key_idea,
                     s.voc12_miou if s.voc12_miou is not None else "",
                     round((entry.get("num_params") or registry.count_params(registry.build(s.name, num_classes=11)))
                           / 1e6, 2),  # building a model only for those without a manifest entry
                     entry.get("val_miou", "not trained yet"), latency.get(s.name, "")])
    return rows


def build_tab(gr):
    with gr.Tab("Models", id="models"):
        gr.Markdown("The compact (EfficientNet-Lite0) configuration of each architecture, trained on CamVid here. "
                    "VOC12 scores are the PASCAL VOC 2012 test mIoU the 2017 review quotes for the papers' own models; "
                    "latency comes from `python -m segviz bench` (assets/bench.json).")
        return gr.HTML(models_html(), elem_id="models-table")
