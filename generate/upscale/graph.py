"""Reading an ncnn .param graph: how far each output pixel sees, and where the network can be cut."""
from __future__ import annotations

import math
from dataclasses import dataclass


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
