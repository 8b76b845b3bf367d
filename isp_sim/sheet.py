"""Contact sheets: labelled image grids written as PNG."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def contact_sheet(rows: Sequence[Sequence[tuple[str, np.ndarray]]], path: str | Path, tile: int = 192) -> Path:
    """Write a grid; ``rows`` is a list of rows of (label, uint8 (H, W, 3)) cells. Written atomically."""
    from PIL import Image, ImageDraw

    from .io import atomic_path

    ncol = max(len(r) for r in rows)
    label_h = 14
    sheet = Image.new("RGB", (ncol * tile, len(rows) * (tile + label_h)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, row in enumerate(rows):
        for j, (label, img) in enumerate(row):
            im = Image.fromarray(img)
            im.thumbnail((tile, tile))
            x0, y0 = j * tile, i * (tile + label_h)
            sheet.paste(im, (x0 + (tile - im.width) // 2, y0 + label_h + (tile - im.height) // 2))
            draw.text((x0 + 2, y0 + 1), label[:34], fill=(0, 0, 0))
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        sheet.save(tmp, format="PNG")
    return path
