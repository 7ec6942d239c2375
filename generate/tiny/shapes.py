"""Procedurally drawn images with captions: coloured shapes on coloured backgrounds.

The tiny preset is trained on these, and tests use them as images of known content.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {
    "red": (220, 30, 30),
    "green": (40, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 40),
    "purple": (140, 50, 170),
    "orange": (250, 140, 20),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "pink": (250, 150, 190),
    "cyan": (40, 210, 220),
}
SHAPES = ("circle", "square", "triangle", "star")


@dataclass(frozen=True)
class Drawing:
    """What one drawn image shows."""

    colour: str
    shape: str
    background: str

    @property
    def caption(self) -> str:
        """The caption the tiny CLIP learns for this drawing."""
        return f"a {self.colour} {self.shape} on a {self.background} background"


def _jitter(rgb: tuple, rng: random.Random, amount: int = 18) -> tuple:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in rgb)


def _star(cx: float, cy: float, r: float, rot: float) -> list:
    pts = []
    for i in range(10):
        a = rot + i * np.pi / 5
        rr = r if i % 2 == 0 else r * 0.45
        pts.append((cx + rr * np.sin(a), cy - rr * np.cos(a)))
    return pts


def draw(d: Drawing, size: int = 32, rng: random.Random | None = None) -> Image.Image:
    """Draw one image of ``d`` at ``size`` pixels (antialiased by drawing at 4x and shrinking)."""
    rng = rng or random.Random(0)
    s = size * 4
    img = Image.new("RGB", (s, s), _jitter(COLOURS[d.background], rng))
    g = ImageDraw.Draw(img)
    r = rng.uniform(0.22, 0.4) * s
    cx, cy = rng.uniform(r, s - r), rng.uniform(r, s - r)
    fill = _jitter(COLOURS[d.colour], rng)
    if d.shape == "circle":
        g.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif d.shape == "square":
        g.rectangle([cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85], fill=fill)
    elif d.shape == "triangle":
        g.polygon([(cx, cy - r), (cx - r * 0.95, cy + r * 0.8), (cx + r * 0.95, cy + r * 0.8)], fill=fill)
    else:
        g.polygon(_star(cx, cy, r * 1.1, rng.uniform(0, 0.6)), fill=fill)
    return img.resize((size, size), Image.LANCZOS)


def random_drawing(rng: random.Random) -> Drawing:
    """A random drawing whose shape colour differs from its background."""
    names = list(COLOURS)
    colour = rng.choice(names)
    background = rng.choice([n for n in names if n != colour])
    return Drawing(colour, rng.choice(SHAPES), background)


def dataset(n: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """n drawn images as uint8 [n, size, size, 3] and their captions, reproducible from seed."""
    rng = random.Random(seed)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    captions = []
    for i in range(n):
        d = random_drawing(rng)
        images[i] = np.asarray(draw(d, size, rng))
        captions.append(d.caption)
    return images, captions
