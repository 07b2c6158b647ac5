"""A crop of a photo, as the API takes it: ``x,y,w,h``, fractions of the upright (EXIF-rotated) image.

Light (standard library only): the decoder processes (:mod:`model.decoding`) import it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

#: How far a crop may reach past the image's edges, as a fraction, before it is refused: rounding in clients.
EDGE_TOLERANCE = 1e-6


class Crop(NamedTuple):
    """The part of a photo to classify: left ``x``, top ``y``, width ``w`` and height ``h``, each a fraction of the
    upright image's width or height (``Crop(0, 0, 1, 1)`` is the whole photo)."""

    x: float
    y: float
    w: float
    h: float

    @classmethod
    def parse(cls, text: str) -> Crop:
        """From ``"x,y,w,h"`` (four numbers in [0, 1], the box inside the image and not empty).

        Raises:
            ValueError: anything else, with a message that says what is wrong.
        """
        parts = text.split(",")
        if len(parts) != 4:
            raise ValueError(f"give four numbers x,y,w,h, got {text[:40]!r}")
        try:
            x, y, w, h = (float(part) for part in parts)
        except ValueError:
            raise ValueError(f"x,y,w,h must be numbers, got {text[:40]!r}") from None
        if not all(math.isfinite(v) for v in (x, y, w, h)):
            raise ValueError(f"x,y,w,h must be finite numbers, got {text[:40]!r}")
        if w <= 0 or h <= 0:
            raise ValueError("the crop is empty: its width and height must be above 0")
        if x < 0 or y < 0 or x + w > 1 + EDGE_TOLERANCE or y + h > 1 + EDGE_TOLERANCE:
            raise ValueError("the crop reaches outside the image: x and y from 0, x + w and y + h at most 1")
        return cls(x, y, min(w, 1 - x), min(h, 1 - y))

    def box(self, size: tuple[int, int]) -> tuple[int, int, int, int]:
        """The crop in pixels of an image of ``size`` (width, height): ``(left, top, right, bottom)`` as Pillow's
        ``Image.crop`` takes it, at least one pixel each way."""
        width, height = size
        left, top = min(int(self.x * width), width - 1), min(int(self.y * height), height - 1)
        right = max(left + 1, min(width, round((self.x + self.w) * width)))
        bottom = max(top + 1, min(height, round((self.y + self.h) * height)))
        return left, top, right, bottom
