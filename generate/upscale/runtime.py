"""Running the networks on ncnn: loading them, their memory pools, and upscaling images and files."""
from __future__ import annotations

import functools
import os
import threading
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from gallery.errors import BadRequest, CuratorError, WeightsMissing
from gallery.imaging import write_png

from .graph import Split
from .plan import (DEFAULT_FEATHER, DEFAULT_MAX_MEMORY, DEFAULT_MAX_PIXELS, DEFAULT_OVERLAP, Layout, Plan,
                   Planner, Tile, model_layout)
from .registry import DEFAULT_MODEL, WHEEL, get_model, model_files
from .stitch import crop, from_planes, round_into, stitch_passes, to_planes, write_tail

Callback = Callable[[int, int], None]


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


def has_avx512() -> bool:
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


class Upscaler:
    """Real-ESRGAN on ncnn for one model: loads the network lazily, once, and upscales PIL images in bounded passes."""

    def __init__(self, model: str = DEFAULT_MODEL, *, threads: int | None = None, tile: int | None = None,
                 overlap: int = DEFAULT_OVERLAP, feather: int = DEFAULT_FEATHER, use_gpu: bool = True,
                 max_pixels: int = DEFAULT_MAX_PIXELS, max_memory: int = DEFAULT_MAX_MEMORY,
                 split: bool = True, winograd63: bool | None = None, layout: Layout | None = None):
        """Settings for one model; `layout` replaces what its graph says about tiling (None: read it)."""
        self.spec = get_model(model)
        if threads is not None and threads < 1:
            raise BadRequest(f"threads must be at least 1, not {threads}")
        read = (lambda: layout) if layout is not None else functools.partial(model_layout, self.spec, overlap, split)
        # 3x3 convolutions on the CPU as F(6x6, 3x3) Winograd (None: where the CPU has AVX-512);
        # see _use_winograd63. Not used on a GPU.
        self._planner = Planner(self.spec, read, tile=tile, overlap=overlap, feather=feather, max_memory=max_memory,
                                max_pixels=max_pixels, winograd63=has_avx512() if winograd63 is None else winograd63)
        self.threads = threads or _cpu_count()
        self.use_gpu = use_gpu
        self.use_split = split  # False: always tile the whole network (for comparison)
        self._net = None
        # ncnn memory pools per stage (from blob, to blob), and the input pixels they were sized for.
        self._pools: dict[tuple[str, str], tuple] = {}
        self._pool_pixels: dict[tuple[str, str], int] = {}
        self._gpu = self._f63 = False
        self._lock = threading.Lock()

    @property
    def planner(self) -> Planner:
        """What plans this upscaler's passes and estimates their memory."""
        return self._planner

    @planner.setter
    def planner(self, planner: Planner) -> None:
        """Plan from now on with other settings (a Planner for the same model); the network stays loaded."""
        if planner.spec != self.spec:
            raise BadRequest(f"a planner for {planner.spec.name} cannot plan for {self.spec.name}")
        self._planner = planner

    @property
    def scale(self) -> int:
        """How many times larger each side of the output is."""
        return self.spec.scale

    @property
    def device(self) -> str:
        """'vulkan' or 'cpu' once the network is loaded, else 'unloaded'."""
        return "unloaded" if self._net is None else "vulkan" if self._gpu else "cpu"

    @property
    def uses_winograd63(self) -> bool:
        """Whether the loaded network runs its 3x3 convolutions as F(6x6, 3x3) Winograd (see _use_winograd63)."""
        return self._net is not None and self._f63

    @property
    def net(self):
        """The loaded ncnn.Net, or None before loading and after closing."""
        return self._net

    @property
    def kept_pools(self) -> int:
        """How many stages (pairs of blobs) hold ncnn memory pools between passes."""
        return len(self._pool_pixels)

    @property
    def split(self) -> Split | None:
        """Where this model's network is cut into body and tail, or None (read from its .param once)."""
        return self._planner.split

    @property
    def context(self) -> int:
        """Pixels of context each tiled pass through the whole network reads beyond its core."""
        return self._planner.layout.context

    def plan(self, width: int, height: int) -> Plan:
        """The passes used for an image of this size (see Plan); BadRequest if none fits max_memory."""
        return self._planner.plan(width, height)

    def estimate_memory(self, width: int, height: int) -> int:
        """Estimated peak bytes to upscale a width x height image with this upscaler's settings."""
        return self._planner.estimate_memory(width, height)

    def check_size(self, width: int, height: int) -> None:
        """Raise BadRequest, before any work, for an image over the pixel or memory limit."""
        self._planner.check_size(width, height)

    def load(self):
        """Load the network now rather than on the first upscale (idempotent); returns the ncnn.Net."""
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
            f63 = not gpu and self._planner.winograd63
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

    def forward(self, src: str, dst: str, x: np.ndarray) -> np.ndarray:
        """One network pass from blob `src` (a CxHxW float32 array) to blob `dst`, returned as CxHxW float32."""
        return self._forward(self.load(), x, src, dst)

    def _forward(self, net, x: np.ndarray, src: str, dst: str, keep_others: bool = False) -> np.ndarray:
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
        net = self.load()
        done = 0

        def tick() -> None:
            nonlocal done
            done += 1
            if callback is not None:
                callback(done, plan.total)

        out = np.empty((H * self.scale, W * self.scale, 3), np.uint8)
        if plan.split is not None:
            self._run_split(net, plan, rgb, out, tick)
            return out

        def run(t: Tile) -> np.ndarray:
            y = self._forward(net, to_planes(crop(rgb, t.context)), self.spec.input_blob, self.spec.output_blob)
            return from_planes(y, t, self.scale, self.spec.stem)

        stitch_passes(plan, H, W, self.scale, 3, self._planner.half_feather(plan), run, round_into(out), tick)
        return out

    def _run_split(self, net, plan: Plan, rgb: np.ndarray, out: np.ndarray, tick: Callable[[], None]) -> None:
        # The body's passes fill a feature map of the whole image; the tail's tiles of it fill `out`.
        spec, split, (H, W) = self.spec, plan.split, rgb.shape[:2]
        features = np.empty((H, W, split.channels), np.float32)

        def body(t: Tile) -> np.ndarray:
            h, w = t.context[3] - t.context[1], t.context[2] - t.context[0]
            y = self._forward(net, to_planes(crop(rgb, t.context)), spec.input_blob, split.blob, plan.cofit)
            if y.shape != (split.channels, h, w):
                raise CuratorError(f"{spec.stem}'s blob {split.blob} has shape {y.shape} for a {w}x{h} input")
            return y.transpose(1, 2, 0)

        def keep(r0: int, r1: int, rows: np.ndarray) -> None:
            features[r0:r1] = rows

        def tail(t: Tile) -> np.ndarray:
            x = np.ascontiguousarray(crop(features, t.context).transpose(2, 0, 1))
            y = self._forward(net, x, split.blob, spec.output_blob, plan.cofit)
            return from_planes(y, t, self.scale, spec.stem)

        stitch_passes(plan, H, W, 1, split.channels, self._planner.half_feather(plan), body, keep, tick)
        write_tail(plan, out, self.scale, tail, tick)

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
