"""The review as one self-contained HTML file: every picture embedded, no network needed to open it."""
from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from . import viz
from .review import Review, class_table, frame_views, leaderboard, rank, to_json, trained_on_note, trimap_curves

THUMB_WIDTH = 240
GALLERY_FRAMES = 6

STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
table{border-collapse:collapse;font-size:13px;margin:8px 0 20px}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right}
th{background:#f3f3f3;cursor:pointer}td:first-child,th:first-child{text-align:left}
.frame{display:flex;flex-wrap:wrap;gap:6px;margin-bottom:14px}
figure{margin:0;font-size:11px}figure img{display:block}
.note{color:#666;font-size:13px}
"""
SORT_SCRIPT = """
document.querySelectorAll("table.sortable th").forEach((th, col) => th.addEventListener("click", () => {
  const body = th.closest("table").tBodies[0], rows = [...body.rows], up = th.dataset.up !== "1";
  const key = r => { const t = r.cells[col].textContent, v = parseFloat(t); return isNaN(v) ? t : v; };
  rows.sort((a, b) => (key(a) > key(b) ? 1 : key(a) < key(b) ? -1 : 0) * (up ? 1 : -1));
  th.dataset.up = up ? "1" : "0"; rows.forEach(r => body.appendChild(r));
}));
"""


def _data_uri(image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    image.save(buf, format=fmt, **({"quality": 82} if fmt == "JPEG" else {}))
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buf.getvalue()).decode()}"


def _figure_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return f"data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}"


def _thumb(image: np.ndarray) -> str:
    h, w = image.shape[:2]
    small = Image.fromarray(image).resize((THUMB_WIDTH, max(1, round(h * THUMB_WIDTH / w))), Image.BILINEAR)
    return _data_uri(small, "JPEG")


def _cell(value) -> str:
    return "-" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.2f}"


def _table(header: list[str], rows: list[list], sortable: bool = True) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c) if isinstance(c, str) else _cell(c)}</td>" for c in row)
                   + "</tr>" for row in rows)
    return f'<table class="{"sortable" if sortable else ""}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _crf_settings(params: dict) -> str:
    return html.escape(", ".join(f"{k.replace('_', ' ')} {v}" for k, v in params.items()))


def render(review: Review) -> str:
    """The report's HTML."""
    data = to_json(review)
    labelset = review.source.labels
    crf = review.crf is not None
    parts = [f"<h1>segviz review: {html.escape(review.source.title)}</h1>",
             f'<p class="note">{data["images"]} images, {len(data["skipped"])} skipped; label set '
             f'{html.escape(labelset.name)}; images up to 1024 px on the longer side; scores summed over the images as '
             f'<code>segviz eval</code> does{"; CRF: " + _crf_settings(data["crf"]) if crf else ""}. '
             f'BF: boundary F-score (tolerance 0.75% of the image diagonal).</p>']
    models = sorted(data["models"], key=lambda m: -m["miou"])
    parts += ["<h2>Leaderboard</h2>", _table(*leaderboard(data))]
    if note := trained_on_note(data):
        parts.append(f'<p class="note">Note: {html.escape(note)}.</p>')
    parts += ["<h2>Per-class IoU</h2>", _table(*class_table(data))]
    bands, curves = trimap_curves(data)
    parts += ["<h2>Near boundaries (trimap)</h2>",
              f'<img alt="trimap curves" src="{_figure_uri(viz.trimap_figure(bands, curves))}">',
              '<p class="note">pixel accuracy per band:</p>',
              _table(["model", *[f"{b} px" for b in bands]],
                     [[name, *values] for name, values in trimap_curves(data, "accuracy")[1].items()], sortable=False)]
    parts.append("<h2>Confusion matrices (rows: true class, normalised)</h2><div class='frame'>")
    for m in models:
        parts.append(f'<img alt="confusion matrix of {html.escape(m["name"])}" '
                     f'src="{_figure_uri(viz.confusion_figure(m["confusion_matrix"], labelset.classes, m["title"]))}">')
    parts.append("</div>")
    best = next(r for r in review.models if r.name == models[0]["name"])
    galleries = [(f"Hardest frames for {best.title} (lowest per-image mIoU)", rank(review, "miou", best.name))]
    if len(review.models) > 1:
        galleries.append(("Frames the models disagree on most", rank(review, "disagreement")))
    for title, order in galleries:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        for index, _ in order[:GALLERY_FRAMES]:
            figures = "".join(f'<figure><img alt="{html.escape(cap)}" src="{_thumb(img)}"><figcaption>'
                              f'{html.escape(cap)}</figcaption></figure>' for img, cap in frame_views(review, index))
            parts.append(f'<div class="frame">{figures}</div>')
    if data["skipped"]:
        parts += ["<h2>Skipped</h2>", _table(["file", "reason"], [[s["file"], s["reason"]] for s in data["skipped"]],
                                             sortable=False)]
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>segviz review</title><style>{STYLE}</style>"
            f"</head><body>{''.join(parts)}<script>{SORT_SCRIPT}</script></body></html>")


def write_report(review: Review, path) -> None:
    """Write :func:`render` to ``path`` (through a temporary file: never half written)."""
    tmp = Path(f"{path}.part")
    tmp.write_text(render(review), encoding="utf-8")
    os.replace(tmp, path)
