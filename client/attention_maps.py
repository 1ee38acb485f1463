"""Draw a caption's attention maps over its image: one panel per word (as Show, Attend and Tell's figures).

Takes what the service answers to `attention: true` (the words in `tokens`, a G x G
map per word in `attention`), so the demo page draws a reply as it came, and the
gallery (`training/gallery.py`) draws its in-process captions the same way.
"""

from __future__ import annotations

import textwrap
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps

Grid = Sequence[Sequence[float]]  # G rows of G weights, top row first


def upsampled(grid: Grid, size: tuple[int, int]) -> np.ndarray:
    """A G x G map stretched smoothly (bilinear) over an image of `size` (width, height): (height, width)."""
    cells = Image.fromarray(np.asarray(grid, dtype=np.float32), mode="F")
    return np.asarray(cells.resize(size, Image.BILINEAR))


def attention_figure(image: Image.Image, words: Sequence[str], maps: Sequence[Grid], *, columns: int = 5,
                     title: str | None = None):
    """A matplotlib figure: the image, then one panel per word with its map over the image.

    Each panel is scaled to its own largest weight, so where a word looks shows even
    when the weights are spread thin over many cells.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(words) != len(maps):
        raise ValueError(f"{len(words)} words but {len(maps)} attention maps; they go one per word")
    picture = ImageOps.exif_transpose(image).convert("RGB")  # upright, as the service read it before captioning
    panels = len(words) + 1
    rows = (panels + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes.flat[0].imshow(picture)
    axes.flat[0].set_title("\n".join(textwrap.wrap(title or " ".join(words), 28)), fontsize=8)
    for ax, word, grid in zip(list(axes.flat)[1:], words, maps):
        ax.imshow(picture)
        heat = upsampled(grid, picture.size)
        ax.imshow(heat, cmap="inferno", alpha=0.6, vmin=0.0, vmax=max(float(heat.max()), 1e-6))
        ax.set_title(word, fontsize=10)
    fig.tight_layout()
    return fig
