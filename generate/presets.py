"""Named model presets, and where their weights come from.

A diffusion preset is a guided_diffusion architecture plus one weights file; a CLIP preset is
an open_clip model name plus a pretrained tag or a local file. Weights are fetched on first use
into ``<instance>/models`` with a progress bar and verified before they are used. When they
cannot be fetched the user gets one message naming the file, the URL and where to put it.
"""
from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UnknownPreset, WeightsCorrupt, WeightsMissing
from .files import sha256_file

TINY_DIR = Path(__file__).resolve().parent / "tiny"


@dataclass(frozen=True)
class WeightsFile:
    """One weights file: its name in the cache, where to download it, what it should look like."""

    filename: str
    url: str | None = None
    bundled: Path | None = None
    size: int | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class DiffusionPreset:
    """A guided_diffusion UNet architecture with the weights trained for it."""

    name: str
    config: dict
    weights: WeightsFile
    description: str = ""

    @property
    def image_size(self) -> int:
        """Side of the square images this model makes."""
        return int(self.config["image_size"])


@dataclass(frozen=True)
class ClipSpec:
    """An open_clip model and the weights to load into it (a pretrained tag or a file)."""

    model: str
    pretrained: str
    config_file: Path | None = field(default=None, compare=False)

    @property
    def id(self) -> str:
        """Stable identifier stored with recipes and embeddings."""
        return f"{self.model}/{self.pretrained}" if not self.is_file else f"{self.model}/{Path(self.pretrained).name}"

    @property
    def is_file(self) -> bool:
        """Whether the weights are a local file rather than an open_clip tag."""
        return self.pretrained.endswith((".pt", ".pth", ".bin", ".safetensors"))


# The architecture of OpenAI's 256x256 unconditional ImageNet model (Dhariwal & Nichol 2021),
# as used by the CLIP-guided diffusion notebooks.
UNCOND_256 = DiffusionPreset(
    name="uncond-256",
    config=dict(
        attention_resolutions="32,16,8",
        class_cond=False,
        diffusion_steps=1000,
        rescale_timesteps=True,
        image_size=256,
        learn_sigma=True,
        noise_schedule="linear",
        num_channels=256,
        num_head_channels=64,
        num_res_blocks=2,
        resblock_updown=True,
        use_scale_shift_norm=True,
    ),
    weights=WeightsFile(
        filename="256x256_diffusion_uncond.pt",
        url="https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt",
    ),
    description="OpenAI 256x256 unconditional ImageNet diffusion (552M parameters)",
)

# Trained by generate/tiny/train.py on drawn shapes; small enough to run in tests on a CPU.
TINY_32 = DiffusionPreset(
    name="tiny",
    config=dict(
        attention_resolutions="16",
        class_cond=False,
        diffusion_steps=1000,
        rescale_timesteps=True,
        image_size=32,
        learn_sigma=True,
        noise_schedule="linear",
        num_channels=32,
        channel_mult="1,2,2",
        num_head_channels=32,
        num_res_blocks=1,
        resblock_updown=False,
        use_scale_shift_norm=True,
    ),
    weights=WeightsFile(filename="tiny-unet.pt", bundled=TINY_DIR / "tiny-unet.pt"),
    description="tiny 32x32 UNet trained on drawn coloured shapes (offline demo and tests)",
)

DIFFUSION_PRESETS = {p.name: p for p in (UNCOND_256, TINY_32)}

TINY_CLIP = ClipSpec(
    model="tiny-clip",
    pretrained=str(TINY_DIR / "tiny-clip.pt"),
    config_file=TINY_DIR / "tiny-clip.json",
)

# Short names for the CLIP models people use with the 256 model; any "MODEL/TAG" that open_clip
# lists works too, and so does "MODEL/path/to/weights.pt".
CLIP_PRESETS = {
    "tiny": TINY_CLIP,
    "vit-b-32": ClipSpec("ViT-B-32", "openai"),
    "vit-b-16": ClipSpec("ViT-B-16", "openai"),
    "vit-b-32-laion": ClipSpec("ViT-B-32", "laion2b_s34b_b79k"),
    "vit-l-14": ClipSpec("ViT-L-14", "openai"),
}

# Which CLIP goes with which diffusion preset when the user names none.
DEFAULT_CLIP = {"tiny": "tiny", "uncond-256": "vit-b-16"}


def diffusion_preset(name: str) -> DiffusionPreset:
    """Look up a diffusion preset by name."""
    try:
        return DIFFUSION_PRESETS[name]
    except KeyError:
        raise UnknownPreset(
            f"unknown model preset {name!r}; choose one of: {', '.join(DIFFUSION_PRESETS)}"
        ) from None


def register_tiny_clip_config() -> None:
    """Make open_clip aware of the tiny model's JSON config (idempotent)."""
    import open_clip

    if TINY_CLIP.model not in open_clip.list_models():
        open_clip.add_model_config(TINY_CLIP.config_file)


def clip_spec(name: str) -> ClipSpec:
    """Resolve a CLIP preset name, an open_clip 'MODEL/TAG' pair or 'MODEL/path/to/file.pt'."""
    if name in CLIP_PRESETS:
        return CLIP_PRESETS[name]
    import open_clip

    if "/" not in name:
        raise UnknownPreset(
            f"unknown CLIP model {name!r}; use one of {', '.join(CLIP_PRESETS)} or an open_clip "
            "'MODEL/TAG' pair such as ViT-B-32/laion2b_s34b_b79k"
        )
    model, pretrained = name.split("/", 1)
    if model == TINY_CLIP.model:
        register_tiny_clip_config()
    if model not in open_clip.list_models():
        raise UnknownPreset(f"unknown open_clip model {model!r} in {name!r}")
    spec = ClipSpec(model, pretrained)
    if spec.is_file:
        if not Path(pretrained).is_file():
            raise WeightsMissing(f"CLIP weights file not found: {pretrained}")
        return spec
    if not open_clip.get_pretrained_cfg(model, pretrained):
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(model)) or "none"
        raise UnknownPreset(f"open_clip has no weights tagged {pretrained!r} for {model}; tags: {tags}")
    return spec


def cache_dir(instance: Path) -> Path:
    """The folder under the instance folder where downloaded weights live."""
    return Path(instance) / "models"


def _online(host: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to host:443 opens quickly (fails fast when offline)."""
    if os.environ.get("CLIP_CURATOR_OFFLINE") or os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _missing_message(what: str, filename: str, url: str, dest: Path) -> str:
    return (
        f"{what} weights {filename} are not cached and cannot be downloaded (offline?): "
        f"fetch {url} and save it as {dest}, or pass a local file path"
    )


def _download(url: str, dest: Path, progress: bool = True) -> None:
    """Stream url to dest via a .part file, with a progress bar; dest appears only when complete."""
    from tqdm import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=30) as r, open(part, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar:
                for chunk in iter(lambda: r.read(1 << 20), b""):
                    f.write(chunk)
                    bar.update(len(chunk))
            f.flush()
            os.fsync(f.fileno())
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)


def diffusion_weights_path(preset: DiffusionPreset, instance: Path, checkpoint: str | None = None,
                           progress: bool = True) -> Path:
    """Return a local path to the preset's weights, downloading them into the cache if needed."""
    if checkpoint:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise WeightsMissing(f"checkpoint not found: {path}")
        return path
    w = preset.weights
    if w.bundled is not None:
        if not w.bundled.is_file():
            raise WeightsMissing(
                f"bundled weights {w.bundled} are missing; rebuild them with python -m generate.tiny.train"
            )
        return w.bundled
    dest = cache_dir(instance) / w.filename
    if dest.is_file():
        _check_sidecar(dest)
        return dest
    host = urllib.parse.urlparse(w.url).hostname
    if not _online(host):
        raise WeightsMissing(_missing_message(f"diffusion model {preset.name!r}", w.filename, w.url, dest))
    try:
        _download(w.url, dest, progress=progress)
    except (urllib.error.URLError, OSError) as e:
        raise WeightsMissing(_missing_message(f"diffusion model {preset.name!r}", w.filename, w.url, dest)
                             + f" ({e})") from None
    try:
        verify_file(w, dest)
    except WeightsCorrupt:
        dest.unlink(missing_ok=True)
        raise
    # The publisher gives no checksum: record the one we downloaded, so later damage is caught.
    _sidecar(dest).write_text(json.dumps({"size": dest.stat().st_size, "sha256": sha256_file(dest), "url": w.url}))
    return dest


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256.json")


def _check_sidecar(path: Path) -> None:
    """A cached file whose size differs from what was downloaded is damaged: say so."""
    try:
        meta = json.loads(_sidecar(path).read_text())
    except (OSError, ValueError):
        return
    if path.stat().st_size != meta.get("size"):
        raise WeightsCorrupt(f"{path} is {path.stat().st_size} bytes but {meta.get('size')} were downloaded: "
                             "delete it and run again to download it afresh")


def verify_file(w: WeightsFile, path: Path) -> None:
    """Check a file's size and checksum where the preset knows them."""
    if w.size is not None and path.stat().st_size != w.size:
        raise WeightsCorrupt(f"{path} is {path.stat().st_size} bytes, expected {w.size}: delete it and retry")
    if w.sha256 is not None and sha256_file(path) != w.sha256:
        raise WeightsCorrupt(f"{path} does not match its sha256 checksum: delete it and retry")


def clip_weights_path(spec: ClipSpec, instance: Path, progress: bool = True) -> Path:
    """Return a local path to a CLIP model's weights, fetching open_clip's pretrained tag if needed."""
    if spec.is_file:
        path = Path(spec.pretrained)
        if not path.is_file():
            raise WeightsMissing(f"CLIP weights file not found: {path}")
        return path
    import open_clip

    cfg = open_clip.get_pretrained_cfg(spec.model, spec.pretrained)
    folder = cache_dir(instance) / "open_clip"
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub)
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for name in names:
            hit = try_to_load_from_cache(repo, name, cache_dir=folder)
            if isinstance(hit, str):
                return Path(hit)
        url = f"https://huggingface.co/{repo}/resolve/main/{names[-1]}"
        host = "huggingface.co"
    else:
        url = cfg["url"]
        host = urllib.parse.urlparse(url).hostname
        cached = folder / os.path.basename(urllib.parse.urlparse(url).path)
        if cached.is_file():
            return cached
    if not _online(host):
        raise WeightsMissing(
            f"CLIP weights for {spec.id} are not cached and cannot be downloaded (offline?): fetch {url} "
            f"and pass it as --clip {spec.model}/path/to/{os.path.basename(url)}"
        )
    try:
        return Path(open_clip.download_pretrained(cfg, cache_dir=str(folder)))
    except Exception as e:  # open_clip wraps hub and HTTP errors in several types
        raise WeightsMissing(f"could not download CLIP weights for {spec.id} from {url}: {e}") from None
