"""A row as a picture: its images reassembled from their patches, and one coloured cell per token.

The strip shows the sequence the model sees: colour = modality, saturated = a training target
(loss mask 1, also marked by a dark bar), pale = context only. RL rows get one line per timestep.
"""

from __future__ import annotations

import os

import numpy as np

from tokenizer_kit.layout import CONTINUOUS, DISCRETE, IMAGE, MODALITY_NAMES, PATCH_SIZE, SEPARATOR, TEXT
from tokenizer_kit.files import atomic_path
from tokenizer_kit.sequence import Row

# (context colour, target colour) per modality
COLOURS = {
    TEXT: ((160, 190, 235), (31, 90, 200)),
    IMAGE: ((175, 175, 175), (90, 90, 90)),
    DISCRETE: ((170, 225, 170), (20, 140, 40)),
    CONTINUOUS: ((250, 205, 150), (225, 110, 10)),
    SEPARATOR: ((230, 60, 60), (150, 0, 0)),
}
CELL_W, CELL_H, GAP, BAR = 9, 14, 1, 3
MAX_LINES = 48  # lines of the strip drawn; longer rows are cut (and say so)
WRAP = 64  # tokens per line of rows without steps


def token_lines(row: Row, wrap: int = WRAP) -> list[tuple[str, int, int]]:
    """(label, start, stop) of each strip line: one per timestep (RL), else `wrap` tokens each."""
    n = len(row.tokens)
    if len(row.step_starts):
        bounds = list(map(int, row.step_starts)) + [n]
        lines = []
        for t in range(len(row.step_starts)):
            for k, s in enumerate(range(bounds[t], bounds[t + 1], wrap * 4)):
                lines.append((f"t={t}" if k == 0 else "", s, min(s + wrap * 4, bounds[t + 1])))
        return lines
    return [(str(s), s, min(s + wrap, n)) for s in range(0, n, wrap)]


def strip_image(row: Row, lines: list[tuple[str, int, int]]) -> np.ndarray:
    """RGB array with one cell per token; vectorised per line."""
    width = max(stop - start for _, start, stop in lines)
    pal = np.zeros((SEPARATOR + 1, 2, 3), np.uint8)
    for m, (context_colour, target_colour) in COLOURS.items():
        pal[m, 0], pal[m, 1] = context_colour, target_colour
    img = np.full((len(lines) * CELL_H, width * CELL_W, 3), 255, np.uint8)
    for i, (_, start, stop) in enumerate(lines):
        mod = row.modality[start:stop].astype(np.int64)
        tgt = (row.loss_mask[start:stop] > 0).astype(np.int64)
        colours = pal[np.minimum(mod, SEPARATOR), tgt]  # (k, 3)
        block = np.full((CELL_H - GAP, stop - start, CELL_W, 3), 255, np.uint8)
        block[:, :, :CELL_W - GAP] = colours[None, :, None, :]
        block[CELL_H - GAP - BAR:, tgt.astype(bool), :CELL_W - GAP] = 0  # the loss-target bar
        img[i * CELL_H:i * CELL_H + CELL_H - GAP, :(stop - start) * CELL_W] = block.reshape(CELL_H - GAP, -1, 3)
    return img


def mosaic(images: list[np.ndarray], min_size: int = 96, columns: int = 10, pad: int = 6) -> tuple[np.ndarray, list]:
    """Images side by side (nearest-neighbour upscaled so small frames stay visible), with a band
    above each for its label; returns the canvas and where each label goes (x, y)."""
    scale = max(1, int(np.ceil(min_size / max(max(im.shape[:2]) for im in images))))
    scaled = [im.repeat(scale, 0).repeat(scale, 1) for im in images]
    cols = min(columns, len(scaled))
    nrows = -(-len(scaled) // cols)
    label = max(14, max(im.shape[0] for im in scaled) // 6)
    cw = max(im.shape[1] for im in scaled) + pad
    ch = max(im.shape[0] for im in scaled) + label
    canvas = np.full((nrows * ch, cols * cw, 3), 255, np.uint8)
    corners = []
    for k, im in enumerate(scaled):
        y, x = (k // cols) * ch + label, (k % cols) * cw
        canvas[y:y + im.shape[0], x:x + im.shape[1]] = im
        corners.append((x, y))
    return canvas, corners


def _unit_rgb(rgb) -> tuple[float, float, float]:
    """0-255 colour -> matplotlib's 0-1."""
    return rgb[0] / 255, rgb[1] / 255, rgb[2] / 255


def render_row(path: str | os.PathLike, row: Row, images: list[tuple[str, np.ndarray]], title: str) -> None:
    """Write a PNG: the row's images (labelled) over its token strip with a legend."""
    import matplotlib.pyplot as plt  # noqa: PLC0415 - start-up time: matplotlib loads only to draw
    fig = row_figure(row, images, title)
    with atomic_path(path) as tmp:  # the name as given, no ".png" added
        fig.savefig(tmp, dpi=fig.dpi, bbox_inches="tight", format="png")
    plt.close(fig)


def row_figure(row: Row, images: list[tuple[str, np.ndarray]], title: str):
    """The figure `render_row` writes (matplotlib Agg)."""
    import matplotlib  # noqa: PLC0415 - start-up time: matplotlib loads only to draw
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - start-up time: matplotlib loads only to draw
    from matplotlib.patches import Patch  # noqa: PLC0415 - start-up time: matplotlib loads only to draw

    lines = token_lines(row)
    cut = len(lines) > MAX_LINES
    lines = lines[:MAX_LINES]
    strip = strip_image(row, lines) if lines else np.full((CELL_H, CELL_W, 3), 255, np.uint8)
    dpi, zoom = 100, 1.5
    strip_w, strip_h = strip.shape[1] / dpi * zoom, strip.shape[0] / dpi * zoom
    img_w = img_h = 0.0
    if images:
        canvas, corners = mosaic([im for _, im in images])
        img_w, img_h = canvas.shape[1] / dpi, canvas.shape[0] / dpi
        if img_w > 14:
            img_w, img_h = 14.0, img_h * 14 / img_w
    width = max(7.0, strip_w, img_w) + 1.0
    heights = ([img_h + 0.6] if images else []) + [strip_h + 0.6]
    fig = plt.figure(figsize=(width, sum(heights) + 1.2), dpi=dpi)
    top_margin = 0.8 + 0.25 * title.count("\n")  # inches for the (possibly two-line) title
    grid = fig.add_gridspec(len(heights), 1, height_ratios=heights, top=1 - top_margin / (sum(heights) + 1.2),
                            bottom=0.7 / (sum(heights) + 1.2))
    if images:
        ax = fig.add_subplot(grid[0])
        ax.imshow(canvas, interpolation="nearest")
        for (label, _), (x, y) in zip(images, corners, strict=True):
            ax.text(x, y - 2, label, fontsize=8, va="bottom")
        ax.set_axis_off()
        ax.set_title(f"images reassembled from their {PATCH_SIZE}x{PATCH_SIZE} patches", fontsize=10, pad=14)
    ax = fig.add_subplot(grid[-1])
    ax.imshow(strip, interpolation="nearest")
    ax.set_yticks(np.arange(len(lines)) * CELL_H + CELL_H / 2, [lab for lab, _, _ in lines], fontsize=7)
    step = 8 if strip.shape[1] // CELL_W <= 128 else 32
    ax.set_xticks(np.arange(0, strip.shape[1], step * CELL_W) + CELL_W / 2,
                  [str(i) for i in range(0, strip.shape[1] // CELL_W, step)], fontsize=7)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    note = f" (first {MAX_LINES} lines)" if cut else ""
    ax.set_title(f"tokens as the model sees them{note}", fontsize=10)
    present = {(int(m), int(t > 0)) for m, t in zip(row.modality, row.loss_mask, strict=True)}
    handles = [Patch(color=_unit_rgb(COLOURS[m][t]),
                     label=f"{MODALITY_NAMES[m]}{' (loss target: dark, bar)' if t else ''}")
               for m, t in sorted(present)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 3), fontsize=8, frameon=False)
    # placed in inches from the top: suptitle's default (2% of the height) falls into the images of a tall figure
    fig.suptitle(title, fontsize=11, y=1 - 0.15 / (sum(heights) + 1.2), va="top")
    return fig
