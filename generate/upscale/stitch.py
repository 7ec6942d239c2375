"""Assembling pass outputs into one image: cross-faded seams for blended passes, exact cores for the tail."""
from __future__ import annotations

from typing import Callable

import numpy as np

from gallery.errors import CuratorError

from .plan import Plan, Tile

Box = tuple[int, int, int, int]


def crop(a: np.ndarray, box: Box) -> np.ndarray:
    """The x0, y0, x1, y1 box of an HxW(xC) array, as a view."""
    return a[box[1]:box[3], box[0]:box[2]]


def to_planes(rgb: np.ndarray) -> np.ndarray:
    """An HxWx3 uint8 image as the CxHxW float32 array in [0, 1] the networks take."""
    x = np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32)
    x *= 1.0 / 255.0
    return x


def from_planes(y: np.ndarray, tile: Tile, scale: int, name: str) -> np.ndarray:
    """A network's CxHxW output in [0, 1] for the tile's context, as (sH)x(sW)x3 float32 in [0, 255], in place."""
    x0, y0, x1, y1 = tile.context
    h, w = y1 - y0, x1 - x0
    if y.shape != (3, h * scale, w * scale):
        raise CuratorError(f"{name} returned shape {y.shape} for a {w}x{h} input")
    # The networks overshoot [0, 1] slightly at edges.
    np.clip(y, 0.0, 1.0, out=y)
    y *= 255.0
    return y.transpose(1, 2, 0)


def feather(u0: int, u1: int, a0: int, a1: int, length: int, half: int, scale: int) -> np.ndarray:
    """Cross-fade weights of output pixels u0..u1 for the core a0..a1 (input pixels) of an axis of that length."""
    # Linear ramps 2*half input pixels wide, centred on each inner core edge, so a pixel's weights
    # from the two tiles either side of a seam sum to one; image borders get no ramp.
    t = (np.arange(u0, u1, dtype=np.float32) + 0.5) / scale
    if half == 0:
        left = (t >= a0) if a0 > 0 else np.ones_like(t, bool)
        right = (t < a1) if a1 < length else np.ones_like(t, bool)
        return (left & right).astype(np.float32)
    left = np.clip((t - (a0 - half)) / (2 * half), 0, 1) if a0 > 0 else 1.0
    right = np.clip(((a1 + half) - t) / (2 * half), 0, 1) if a1 < length else 1.0
    return np.broadcast_to(np.float32(1.0) * left * right, t.shape).astype(np.float32)


def _tile_rows(tiles: list[Tile]) -> dict[tuple[int, int], list[Tile]]:
    # The tiles of each row of cores (y0, y1), top to bottom as planned.
    rows: dict[tuple[int, int], list[Tile]] = {}
    for t in tiles:
        rows.setdefault((t.core[1], t.core[3]), []).append(t)
    return rows


def stitch_passes(plan: Plan, H: int, W: int, s: int, channels: int, half: int,
                  run: Callable[[Tile], np.ndarray], emit: Callable[[int, int, np.ndarray], None],
                  tick: Callable[[], None]) -> None:
    """Run each of plan.passes and cross-fade their outputs; emit(r0, r1, rows) receives finished rows in order.

    run(tile) returns the (s*h)x(s*w)xC float32 output of the tile's context box; `half` is half
    the cross-fade at each seam (Planner.half_feather). Tile rows are blended into a band buffer;
    rows no later tile touches are emitted at once, so the float buffers never hold more than
    about one tile row.
    """
    tiles = plan.passes
    if len(tiles) == 1:
        emit(0, H * s, run(tiles[0]))
        tick()
        return
    rows = _tile_rows(tiles)
    carry: tuple[int, np.ndarray, np.ndarray] | None = None
    row_keys = list(rows)
    for r, (y0, y1) in enumerate(row_keys):
        b0, b1 = max(0, y0 - half) * s, min(H, y1 + half) * s
        acc = np.zeros((b1 - b0, W * s, channels), np.float32)
        wsum = np.zeros((b1 - b0, W * s), np.float32)
        if carry is not None:
            c0, cacc, cw = carry
            acc[c0 - b0:c0 - b0 + len(cacc)] += cacc
            wsum[c0 - b0:c0 - b0 + len(cw)] += cw
        wy = feather(b0, b1, y0, y1, H, half, s)
        for t in rows[(y0, y1)]:
            x0, _, x1, _ = t.core
            cx0, cy0, _, _ = t.context
            a0, a1 = max(0, x0 - half) * s, min(W, x1 + half) * s
            wx = feather(a0, a1, x0, x1, W, half, s)
            patch = run(t)[b0 - cy0 * s:b1 - cy0 * s, a0 - cx0 * s:a1 - cx0 * s]
            w = wy[:, None] * wx[None, :]
            acc[:, a0:a1] += patch * w[..., None]
            wsum[:, a0:a1] += w
            tick()
        nxt = max(0, y1 - half) * s if r + 1 < len(row_keys) else b1
        emit(b0, nxt, acc[:nxt - b0] / wsum[:nxt - b0, :, None])
        carry = (nxt, acc[nxt - b0:], wsum[nxt - b0:])


def round_into(out: np.ndarray) -> Callable[[int, int, np.ndarray], None]:
    """An emit callback for stitch_passes that rounds finished float rows into the uint8 array `out`."""
    def emit(r0: int, r1: int, rows: np.ndarray) -> None:
        rows += 0.5
        out[r0:r1] = rows  # the cast truncates: rounds half up, as values are not negative

    return emit


def write_tail(plan: Plan, out: np.ndarray, s: int, run: Callable[[Tile], np.ndarray],
               tick: Callable[[], None]) -> None:
    """Run each of plan.tail and write the core of its output, rounded, into the uint8 array `out`.

    run(tile) returns the (s*h)x(s*w)x3 float32 output in [0, 255] of the tile's context box.
    """
    for t in plan.tail:
        # The halo covers the tail's whole reach, so the core of each pass is exact: no blending.
        (x0, y0, x1, y1), (cx0, cy0, _, _) = t.core, t.context
        y = run(t)
        core = y[(y0 - cy0) * s:(y1 - cy0) * s, (x0 - cx0) * s:(x1 - cx0) * s]
        core += 0.5
        out[y0 * s:y1 * s, x0 * s:x1 * s] = core
        tick()
