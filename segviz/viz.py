"""Pictures of predictions: overlays, legends, disagreement, agreement, class shares, errors."""
from __future__ import annotations

import html

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .data.palettes import LabelSet

CORRECT, WRONG, IGNORED = (46, 160, 67), (215, 48, 39), (40, 40, 40)


def colorize(labels: np.ndarray, labelset: LabelSet) -> np.ndarray:
    return labelset.palette()[labels]


def overlay(image: np.ndarray, labels: np.ndarray, labelset: LabelSet, alpha: float = 0.6) -> np.ndarray:
    """Blend the class colours over the image (alpha 0 = image only, 1 = colours only)."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    mixed = (1 - alpha) * image.astype(np.float32) + alpha * colorize(labels, labelset).astype(np.float32)
    return mixed.round().astype(np.uint8)


def legend_html(labelset: LabelSet, present: set[int] | None = None) -> str:
    """One legend for all overlays: a swatch and a name per class (classes not predicted are faded)."""
    items = []
    for i, (name, color) in enumerate(zip(labelset.classes, labelset.colors)):
        faded = present is not None and i not in present
        items.append(
            f'<span class="segviz-legend-item" data-class="{html.escape(name)}" style="display:inline-flex;'
            f'align-items:center;margin:2px 10px 2px 0;opacity:{0.35 if faded else 1}">'
            f'<span style="width:14px;height:14px;border-radius:3px;margin-right:5px;border:1px solid #0003;'
            f'background:rgb{tuple(color)}"></span>{html.escape(name)}</span>')
    return f'<div class="segviz-legend">{"".join(items)}</div>'


def disagreement(label_maps: list[np.ndarray]) -> np.ndarray:
    """Per pixel: how many models disagree with the majority label (0 = all agree)."""
    stack = np.stack(label_maps)  # (M, H, W)
    n_labels = int(stack.max()) + 1
    votes = np.zeros((n_labels, *stack.shape[1:]), np.int32)
    for lab in range(n_labels):
        votes[lab] = (stack == lab).sum(0)
    return len(label_maps) - votes.max(0)


def disagreement_image(label_maps: list[np.ndarray]) -> np.ndarray:
    import matplotlib

    d = disagreement(label_maps)
    cmap = matplotlib.colormaps["magma"]
    scale = max(len(label_maps) - 1, 1)
    return (cmap(d / scale)[..., :3] * 255).round().astype(np.uint8)


def agreement_matrix(label_maps: list[np.ndarray]) -> np.ndarray:
    """(M, M): the fraction of pixels on which each pair of models agree."""
    m = len(label_maps)
    out = np.ones((m, m))
    for i in range(m):
        for j in range(i + 1, m):
            out[i, j] = out[j, i] = float((label_maps[i] == label_maps[j]).mean())
    return out


def class_shares(label_maps: list[np.ndarray], num_classes: int) -> np.ndarray:
    """(M, C): the share of pixels each model gives each class."""
    return np.stack([np.bincount(m.ravel(), minlength=num_classes)[:num_classes] / m.size for m in label_maps])


def error_map(pred: np.ndarray, target: np.ndarray, ignore_index: int) -> np.ndarray:
    """Green where right, red where wrong, dark grey where the truth is ignored."""
    out = np.empty((*pred.shape, 3), np.uint8)
    out[pred == target] = CORRECT
    out[pred != target] = WRONG
    out[target == ignore_index] = IGNORED
    return out


def agreement_figure(matrix: np.ndarray, names: list[str]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(len(names), 3)
    fig, ax = plt.subplots(figsize=(3.5 + 0.55 * n, 2.5 + 0.5 * n), dpi=100)
    im = ax.imshow(matrix * 100, vmin=max(0, matrix.min() * 100 - 5), vmax=100, cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{matrix[i, j] * 100:.0f}", ha="center", va="center", fontsize=7,
                    color="white" if matrix[i, j] < matrix.mean() else "black")
    fig.colorbar(im, ax=ax, label="% pixels with the same label")
    ax.set_title("Pairwise agreement")
    fig.tight_layout()
    return fig


def class_share_figure(shares: np.ndarray, names: list[str], labelset: LabelSet):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 1.4 + 0.35 * len(names)), dpi=100)
    left = np.zeros(len(names))
    for c, (cls, color) in enumerate(zip(labelset.classes, labelset.colors)):
        ax.barh(range(len(names)), shares[:, c] * 100, left=left, color=np.array(color) / 255, label=cls,
                edgecolor="white", linewidth=0.3)
        left += shares[:, c] * 100
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of pixels")
    ax.set_title("Pixel share per class")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.subplots_adjust(left=0.3, right=0.8, bottom=0.5 / (1.4 + 0.35 * len(names)) + 0.1)
    return fig


def titled_grid(images: list[np.ndarray], titles: list[str], columns: int = 4) -> np.ndarray:
    """Tiles of equal-size images with a caption strip above each (for the comparison card)."""
    h, w = images[0].shape[:2]
    strip = 22
    rows = (len(images) + columns - 1) // columns
    cols = min(columns, len(images))
    canvas = Image.new("RGB", (cols * w, rows * (h + strip)), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for k, (img, title) in enumerate(zip(images, titles)):
        r, c = divmod(k, columns)
        canvas.paste(Image.fromarray(img), (c * w, r * (h + strip) + strip))
        draw.text((c * w + 4, r * (h + strip) + 4), title, fill="black", font=font)
    return np.asarray(canvas)
