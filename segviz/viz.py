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
    """Blend the class colours over the image (alpha 0 = image only, 1 = colours only); the label set's
    background class (VOC's) stays transparent, so the objects stand out on the photo."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    a = np.full(labels.shape + (1,), alpha, np.float32)
    if labelset.background is not None:
        a[labels == labelset.background] = 0
    mixed = (1 - a) * image.astype(np.float32) + a * colorize(labels, labelset).astype(np.float32)
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


def legend_image(labelset: LabelSet, present: set[int] | None = None) -> np.ndarray:
    """The legend as a picture (for the comparison card): a swatch and a name per class, one per row;
    classes not predicted are faded."""
    row = 18
    canvas = Image.new("RGB", (200, row * labelset.num_classes + 4), "white")
    d = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for i, (name, color) in enumerate(zip(labelset.classes, labelset.colors)):
        faded = present is not None and i not in present
        y = 2 + i * row
        d.rectangle([4, y + 1, 18, y + 15], fill=tuple(color), outline=(0, 0, 0))
        d.text((26, y + 3), name + (" (not predicted)" if faded else ""), fill=(150, 150, 150) if faded else "black",
               font=font)
    return np.asarray(canvas)


def disagreement(label_maps: list[np.ndarray]) -> np.ndarray:
    """Per pixel: how many models disagree with the majority label (0 = all agree)."""
    stack = np.stack(label_maps)  # (M, H, W)
    n_labels = int(stack.max()) + 1
    votes = np.zeros((n_labels, *stack.shape[1:]), np.int32)
    for lab in range(n_labels):
        votes[lab] = (stack == lab).sum(0)
    return len(label_maps) - votes.max(0)


def disagreement_image(label_maps: list[np.ndarray]) -> np.ndarray:
    """The disagreement map in magma with a colour bar: 0 (all agree) up to all but one model disagreeing."""
    import matplotlib

    d = disagreement(label_maps)
    cmap = matplotlib.colormaps["magma"]
    scale = max(len(label_maps) - 1, 1)
    ticks = sorted({0, scale // 2, scale})
    return with_colour_bar((cmap(d / scale)[..., :3] * 255).round().astype(np.uint8), "magma",
                           [(t / scale, str(t)) for t in ticks], "models disagreeing")


def with_colour_bar(image: np.ndarray, cmap: str, ticks: list[tuple[float, str]], label: str) -> np.ndarray:
    """``image`` with a vertical colour bar on its right: position p (0 bottom, 1 top) has colour cmap(p);
    ``ticks`` are (position, text) pairs, ``label`` is written above the bar."""
    import matplotlib

    h = image.shape[0]
    top, bottom, bar_w, text_w = 16, 6, 14, 8 + 6 * max([len(t) for _, t in ticks] + [1])
    if h - top - bottom < 16:  # too short for a readable bar: the map alone
        return image
    width = max(bar_w + 6 + text_w, 6 * len(label) + 8)
    panel = Image.new("RGB", (width, h), "white")
    span = h - top - bottom
    colours = (matplotlib.colormaps[cmap](np.linspace(1, 0, span))[:, :3] * 255).round().astype(np.uint8)
    panel.paste(Image.fromarray(np.repeat(colours[:, None], bar_w, 1)), (4, top))
    d = ImageDraw.Draw(panel)
    font = ImageFont.load_default()
    d.text((2, 2), label, fill="black", font=font)
    for p, text in ticks:
        y = top + round((1 - p) * (span - 1))
        d.line([4 + bar_w, y, 8 + bar_w, y], fill="black")
        d.text((10 + bar_w, min(max(y - 5, top - 4), h - 11)), text, fill="black", font=font)
    return np.concatenate([image, np.asarray(panel)], 1)


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


def _figure(size: tuple[float, float]):
    """A figure (100 dpi) and its axes that pyplot does not keep: freed with its last reference. pyplot
    keeps each figure it makes until it is closed, so a server holding the figures of requests whose results
    were never shown (a cancelled run) would grow for good."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    return fig, fig.subplots()


def agreement_figure(matrix: np.ndarray, names: list[str]):
    n = max(len(names), 3)
    fig, ax = _figure((3.5 + 0.6 * n, 2.8 + 0.5 * n))
    lo = max(0, matrix.min() * 100 - 5)
    im = ax.imshow(matrix * 100, vmin=lo, vmax=100, cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=9)
    ax.set_yticks(range(len(names)), names, fontsize=9)
    for i in range(len(names)):
        for j in range(len(names)):
            if i != j:  # the diagonal is 100 by definition
                ax.text(j, i, f"{matrix[i, j] * 100:.0f}", ha="center", va="center", fontsize=9,
                        color="white" if matrix[i, j] * 100 < (lo + 100) / 2 else "black")
    fig.colorbar(im, ax=ax, label="% pixels with the same label")
    ax.set_title("Pairwise agreement")
    fig.tight_layout()
    return fig


def class_share_figure(shares: np.ndarray, names: list[str], labelset: LabelSet):
    fig, ax = _figure((8, 1.4 + 0.35 * len(names)))
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


DEPTH_MARKERS = {"strided": ("s", "stride > 1"), "pool": ("v", "pooling"), "dilated": ("o", "dilated conv"),
                 "global": ("*", "global pooling: the whole image")}


def field_depth_figure(curves: dict, image_size: tuple[int, int]):
    """Theoretical field (the larger side, px, log scale) against depth for each model (``curves``: title ->
    ``segviz.receptive_field.DepthPoint`` list); marked where a stride, a pool, a dilated convolution or
    global pooling grows it. Fields that became the whole image are drawn on a line above the rest."""
    import matplotlib
    import matplotlib.lines

    fig, ax = _figure((9, 5))
    finite = [p.size for pts in curves.values() for p in pts if p.kind != "global"] + [max(image_size)]
    top = max(finite) * 1.6  # where "the whole image" is drawn
    styles = ["-", "--", "-.", ":"]
    for k, (title, pts) in enumerate(curves.items()):
        colour = matplotlib.colormaps["tab10"](k % 10)
        # The largest field reached so far: a skip or shortcut branch that reads an earlier, smaller field
        # does not shrink what the network has seen.
        ys = np.maximum.accumulate([top if p.kind == "global" else p.size for p in pts])
        ax.plot([p.depth for p in pts], ys, color=colour, lw=1.8, ls=styles[k // 10 % 4], label=title)
        for kind, (marker, _) in DEPTH_MARKERS.items():
            # global pooling: marked where it first happens
            sel = [(p.depth, y) for i, (p, y) in enumerate(zip(pts, ys)) if p.kind == kind and
                   (kind != "global" or i == 0 or pts[i - 1].kind != "global")]
            if sel:
                ax.scatter(*zip(*sel), marker=marker, color=colour, s=30 if kind != "global" else 90, zorder=3,
                           edgecolors="black", linewidths=0.4)
    ax.axhline(top, color="grey", ls=":", lw=1)
    ax.text(1, top, " the whole image (global pooling)", va="bottom", fontsize=8, color="dimgray")
    for side, what, va in ((image_size[1], "image width", "bottom"), (image_size[0], "image height", "top")):
        ax.axhline(side, color="grey", ls="--", lw=0.8)
        ax.text(1, side, f" {what} ({side} px)", va=va, fontsize=8, color="dimgray")
    ax.set_yscale("log")
    ax.set_ylim(1, top * 1.5)
    ax.set_xlabel("depth (convolutions and pools, in execution order)")
    ax.set_ylabel("largest theoretical field so far (px)")
    ax.set_title("How each architecture grows its receptive field", loc="right")
    handles = [matplotlib.lines.Line2D([], [], ls="", marker=m, color="grey", markeredgecolor="black", label=lab)
               for m, lab in DEPTH_MARKERS.values()]
    first = ax.legend(handles=handles, loc="lower right", fontsize=8, title="marks", title_fontsize=8)
    ax.add_artist(first)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    fig.tight_layout()
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


ERF_GAMMA = 0.4


def heatmap_overlay(image: np.ndarray, heat: np.ndarray, gamma: float = ERF_GAMMA, cmap: str = "inferno") -> np.ndarray:
    """A dimmed image under a heatmap; ``gamma`` < 1 lifts the weak tails (gradients fall off fast)."""
    import matplotlib

    heat = gaussian_blur(heat.astype(np.float32), 2.0)  # per-pixel gradients are speckled
    h = np.clip(heat / max(float(heat.max()), 1e-12), 0, 1) ** gamma
    colours = matplotlib.colormaps[cmap](h)[..., :3] * 255
    a = np.clip(h * 1.2, 0, 0.9)[..., None]
    base = image.astype(np.float32) * 0.45
    return ((1 - a) * base + a * colours).round().astype(np.uint8)


FIELD_COLOUR = (0, 230, 255)


def draw_box(image: np.ndarray, box, pixel: tuple[int, int], label: str | None = None) -> np.ndarray:
    """The theoretical field as a cyan box and the pixel as a green cross. A side of the box beyond the
    image is drawn dashed along the image's edge (the field goes on past it); ``box`` None draws no box
    (the field is the whole image); ``label`` goes in the bottom-left corner."""
    im = Image.fromarray(image)
    d = ImageDraw.Draw(im)
    y, x = pixel
    H, W = image.shape[:2]
    if box is not None:
        y0, x0, y1, x1 = box
        top, left, bottom, right = max(y0, 0), max(x0, 0), min(y1, H) - 1, min(x1, W) - 1
        sides = [((left, top, right, top), y0 < 0), ((left, bottom, right, bottom), y1 > H),
                 ((left, top, left, bottom), x0 < 0), ((right, top, right, bottom), x1 > W)]
        for (ax, ay, bx, by), beyond in sides:
            if not beyond:
                d.line([ax, ay, bx, by], fill=FIELD_COLOUR, width=3)
                continue
            steps = max(abs(bx - ax), abs(by - ay))  # dashes of 8 px, 8 px apart
            for s in np.arange(0, steps + 1, 16):
                e = min(s + 8, steps)
                f0, f1 = s / max(steps, 1), e / max(steps, 1)
                d.line([ax + (bx - ax) * f0, ay + (by - ay) * f0, ax + (bx - ax) * f1, ay + (by - ay) * f1],
                       fill=FIELD_COLOUR, width=5)
    for dx, dy in ((-6, 0), (6, 0), (0, -6), (0, 6)):
        d.line([x, y, x + dx, y + dy], fill=(0, 255, 0), width=2)
    if label:
        d.rectangle([0, H - 15, 8 + 6 * len(label), H - 1], fill=(0, 0, 0))
        d.text((4, H - 14), label, fill=FIELD_COLOUR, font=ImageFont.load_default())
    return np.asarray(im)


def erf_colour_bar(tile: np.ndarray, gamma: float = ERF_GAMMA, cmap: str = "inferno") -> np.ndarray:
    """A heatmap tile with its colour bar: gradient magnitude as a share of the peak, placed as
    :func:`heatmap_overlay` maps it (value v at height v ** gamma)."""
    return with_colour_bar(tile, cmap, [(v ** gamma, f"{v:g}") for v in (0.01, 0.1, 0.5, 1)], "|grad| / peak")


def stamp(image: np.ndarray, text: str, right: bool = False) -> np.ndarray:
    """``text`` in white on a black strip in the top-left (or top-right) corner of ``image``."""
    im = Image.fromarray(image)
    d = ImageDraw.Draw(im)
    x = im.width - 10 - 6 * len(text) if right else 0
    d.rectangle([x, 0, x + 8 + 6 * len(text), 14], fill=(0, 0, 0))
    d.text((x + 4, 1), text, fill=(255, 255, 255), font=ImageFont.load_default())
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
    from .dilation import holes

    fig, ax = _figure((5, 5))
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

    fig, ax = _figure((8, 4.5))
    colors = matplotlib.colormaps["tab20"].colors
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
    cm = np.asarray(cm, np.float64)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1) * 100
    n = len(classes)
    fig, ax = _figure((2.2 + 0.42 * n, 1.8 + 0.4 * n))
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
