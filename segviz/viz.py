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


def changed_map(image: np.ndarray, before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """The image in grey with the pixels whose label changed in magenta."""
    grey = image.mean(2, keepdims=True).repeat(3, 2) * 0.6
    grey[before != after] = (255, 0, 200)
    return grey.round().astype(np.uint8)


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


# --------------------------------------------------------------------------- receptive fields
def gaussian_blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a 2-D array (edges replicated)."""
    r = max(1, int(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    h, w = a.shape
    p = np.pad(a, r, mode="edge")
    v = sum(k[i] * p[i:i + h, :] for i in range(2 * r + 1))
    return sum(k[i] * v[:, i:i + w] for i in range(2 * r + 1))


def heatmap_overlay(image: np.ndarray, heat: np.ndarray, gamma: float = 0.4, cmap: str = "inferno") -> np.ndarray:
    """A dimmed image under a heatmap; ``gamma`` < 1 lifts the weak tails (gradients fall off fast)."""
    import matplotlib

    heat = gaussian_blur(heat.astype(np.float32), 2.0)  # per-pixel gradients are speckled
    h = np.clip(heat / max(float(heat.max()), 1e-12), 0, 1) ** gamma
    colours = matplotlib.colormaps[cmap](h)[..., :3] * 255
    a = np.clip(h * 1.2, 0, 0.9)[..., None]
    base = image.astype(np.float32) * 0.45
    return ((1 - a) * base + a * colours).round().astype(np.uint8)


def draw_box(image: np.ndarray, box, pixel: tuple[int, int], label: str | None = None) -> np.ndarray:
    """The theoretical field as a cyan box (or a note that it is the whole image) and the pixel as a cross."""
    im = Image.fromarray(image)
    d = ImageDraw.Draw(im)
    y, x = pixel
    if box is not None:
        y0, x0, y1, x1 = box
        d.rectangle([x0, y0, x1 - 1, y1 - 1], outline=(0, 230, 255), width=2)
    for dx, dy in ((-6, 0), (6, 0), (0, -6), (0, 6)):
        d.line([x, y, x + dx, y + dy], fill=(0, 255, 0), width=2)
    if label:
        d.rectangle([0, 0, 8 + 6 * len(label), 14], fill=(0, 0, 0))
        d.text((4, 1), label, fill=(255, 255, 255), font=ImageFont.load_default())
    return np.asarray(im)


BRANCH_COLOURS = [(255, 64, 64), (255, 200, 0), (0, 200, 255), (170, 90, 255), (60, 220, 90), (255, 120, 200),
                  (255, 255, 255), (120, 160, 255)]


def taps_image(image: np.ndarray, pixel: tuple[int, int], branches) -> np.ndarray:
    """Where each dilated branch samples the image for output ``pixel``: one colour per branch;
    pooling branches are drawn as their bin grid, with the bin holding the pixel filled."""
    from .dilation import taps

    im = Image.fromarray(image).convert("RGBA")
    layer = Image.new("RGBA", im.size, (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    y, x = pixel
    h, w = image.shape[:2]
    # Drawing replaces pixels of the layer, so pooled regions go first and the taps on top.
    order = sorted(enumerate(branches), key=lambda ib: not ib[1].bins)
    for i, b in order:
        colour = BRANCH_COLOURS[i % len(BRANCH_COLOURS)]
        if b.bins:
            for k in range(1, b.bins):
                d.line([k * w / b.bins, 0, k * w / b.bins, h], fill=colour + (200,), width=2)
                d.line([0, k * h / b.bins, w, k * h / b.bins], fill=colour + (200,), width=2)
            cy, cx = int(y * b.bins / h), int(x * b.bins / w)
            d.rectangle([cx * w / b.bins, cy * h / b.bins, (cx + 1) * w / b.bins, (cy + 1) * h / b.bins],
                        fill=colour + (50,), outline=colour + (255,), width=3)
            continue
        radius = max(2, min(6, b.stride // 2))
        for dy, dx in taps(b.rate, b.kernel) * b.stride:
            ty, tx = y + dy, x + dx
            d.ellipse([tx - radius, ty - radius, tx + radius, ty + radius], fill=colour + (255,),
                      outline=(0, 0, 0, 255))
    return np.asarray(Image.alpha_composite(im, layer).convert("RGB"))


def coverage_figure(coverage: np.ndarray, rates: list[int], kernel: int = 3):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .dilation import holes

    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    masked = np.ma.masked_equal(coverage, 0)
    im = ax.imshow(masked, cmap="viridis", interpolation="nearest")
    ax.set_facecolor("#222")
    c = coverage.shape[0] // 2
    ax.plot([c], [c], marker="+", color="red", markersize=14, mew=2)
    n_holes = holes(coverage)
    ax.set_title(f"{kernel}x{kernel} convs at rates {', '.join(map(str, rates))}: field {coverage.shape[0]} px, "
                 f"{n_holes} holes", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(im, ax=ax, fraction=0.046, label="paths reaching the pixel (dark = never touched)")
    fig.tight_layout()
    return fig


def outlines(image: np.ndarray, labels: np.ndarray, color=(255, 255, 255), thickness: int = 1) -> np.ndarray:
    """``image`` with the outline of every region of ``labels`` drawn over it (OpenCV contours)."""
    import cv2

    out = np.ascontiguousarray(image.copy())
    for value in np.unique(labels):
        mask = (labels == value).astype(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, color, thickness)
    return out


def trimap_figure(bands: list[int], curves: dict[str, list[float]], ylabel: str = "mIoU (%)"):
    """One line per curve (name -> value per band): the score of the pixels within each band width of a
    ground-truth boundary; names ending in "+ CRF" are dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    colors = plt.get_cmap("tab20").colors
    plain = [n for n in curves if not n.endswith("+ CRF")]
    for name, values in curves.items():
        base = name.removesuffix(" + CRF")
        ax.plot(bands, values, marker=".", linestyle="--" if name != base else "-",
                color=colors[plain.index(base) % len(colors)] if base in plain else None, label=name)
    ax.set_xlabel("band width around ground-truth boundaries (px)")
    ax.set_ylabel(ylabel)
    ax.set_title("Trimap: scores near object boundaries")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    return fig


def confusion_figure(cm: np.ndarray, classes, title: str):
    """A confusion matrix normalised per true class (rows sum to 100%), with class names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm, np.float64)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1) * 100
    n = len(classes)
    fig, ax = plt.subplots(figsize=(2.2 + 0.42 * n, 1.8 + 0.4 * n), dpi=100)
    ax.imshow(norm, vmin=0, vmax=100, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    for i in range(n):
        for j in range(n):
            if norm[i, j] >= 0.5:
                ax.text(j, i, f"{norm[i, j]:.0f}", ha="center", va="center", fontsize=6.5,
                        color="white" if norm[i, j] > 50 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig
