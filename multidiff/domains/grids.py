"""PNG grids of 2-D samples (images, spectrograms), written with Pillow."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image
from torch import Tensor


def save_grid_png(images: Tensor, path: Path, min_tile: int = 48, pad: int = 4, columns: int | None = None) -> Path:
    """[N, C, H, W] values in [0, 1] (C = 1 or 3) → one PNG grid, tiles upscaled to at least min_tile px.

    ``columns``: tiles per row (default: a square-ish grid).
    """
    x = images.detach().float().clamp(0, 1).cpu().numpy()
    n, c, h, w = x.shape
    cols = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    scale = max(1, math.ceil(min_tile / max(h, w)))
    th, tw = h * scale + pad, w * scale + pad
    canvas = np.full((rows * th + pad, cols * tw + pad, c), 0.5, dtype=np.float32)
    for i in range(n):
        r, q = divmod(i, cols)
        tile = np.kron(x[i].transpose(1, 2, 0), np.ones((scale, scale, 1)))
        canvas[pad + r * th : pad + r * th + h * scale, pad + q * tw : pad + q * tw + w * scale] = tile
    img = (canvas * 255).round().astype(np.uint8)
    Image.fromarray(img[..., 0] if c == 1 else img).save(path)
    return Path(path)
