"""Named model presets: what each model is, where its weights come from, and what suits it.

Pure data and name lookups. A diffusion preset is a guided_diffusion architecture plus one
weights file and the settings that suit it (the tiny model wants fewer steps and gentler
guidance than the 256 model); a CLIP preset is an open_clip model name plus a pretrained tag or
a local file. Fetching and verifying the files is ``weights``' job.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gallery.errors import UnknownPreset, WeightsMissing

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
    """A guided_diffusion UNet architecture, the weights trained for it, and the settings that suit it."""

    name: str
    config: dict
    weights: WeightsFile
    clip: str
    # Recipe settings a user leaves unset take these values (see Recipe.filled).
    defaults: dict
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


# What every guided_diffusion preset here shares: unconditional, 1000 linear steps, learned sigmas.
_UNCONDITIONAL = dict(class_cond=False, diffusion_steps=1000, rescale_timesteps=True, learn_sigma=True,
                      noise_schedule="linear", use_scale_shift_norm=True)

# The architecture of OpenAI's 256x256 unconditional ImageNet model (Dhariwal & Nichol 2021), with
# the settings of the 2021 CLIP-guided diffusion notebooks.
UNCOND_256 = DiffusionPreset(
    name="uncond-256",
    config=dict(_UNCONDITIONAL, image_size=256, attention_resolutions="32,16,8", num_channels=256,
                num_head_channels=64, num_res_blocks=2, resblock_updown=True),
    weights=WeightsFile(
        filename="256x256_diffusion_uncond.pt",
        url="https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt",
    ),
    clip="vit-b-16",
    defaults=dict(steps=100, clip_guidance_scale=1000.0, tv_scale=150.0, range_scale=50.0, cutn=16,
                  clip_denoised=False),
    description="OpenAI 256x256 unconditional ImageNet diffusion (552M parameters)",
)

# Trained by generate/tiny/train.py on drawn shapes; small enough to run in tests on a CPU. With
# 25 steps or an unclamped x0 prediction this small model blows out, hence its own defaults.
TINY_32 = DiffusionPreset(
    name="tiny",
    config=dict(_UNCONDITIONAL, image_size=32, attention_resolutions="16", num_channels=32, channel_mult="1,2,2",
                num_head_channels=32, num_res_blocks=1, resblock_updown=False),
    weights=WeightsFile(filename="tiny-unet.pt", bundled=TINY_DIR / "tiny-unet.pt", size=2_438_475,
                        sha256="1a931fa6887bbb19162c659ca29e8771da5e2c2507be64d7e964da9c31c593c4"),
    clip="tiny",
    defaults=dict(steps=50, clip_guidance_scale=300.0, tv_scale=0.0, range_scale=0.0, cutn=8, clip_denoised=True),
    description="tiny 32x32 UNet trained on drawn coloured shapes (offline demo and tests)",
)

DIFFUSION_PRESETS = {p.name: p for p in (UNCOND_256, TINY_32)}

TINY_CLIP = ClipSpec(model="tiny-clip", pretrained=str(TINY_DIR / "tiny-clip.pt"),
                     config_file=TINY_DIR / "tiny-clip.json")
TINY_CLIP_WEIGHTS = WeightsFile(filename="tiny-clip.pt", bundled=TINY_DIR / "tiny-clip.pt", size=6_881_509,
                                sha256="a0a2e5e030a68b7641ceb901fe50ab136406fbdd8f879545b50ae7a46e69e390")

# Short names for the CLIP models people use with the 256 model; any "MODEL/TAG" that open_clip
# lists works too, and so does "MODEL/path/to/weights.pt".
CLIP_PRESETS = {
    "tiny": TINY_CLIP,
    "vit-b-32": ClipSpec("ViT-B-32", "openai"),
    "vit-b-16": ClipSpec("ViT-B-16", "openai"),
    "vit-b-32-laion": ClipSpec("ViT-B-32", "laion2b_s34b_b79k"),
    "vit-l-14": ClipSpec("ViT-L-14", "openai"),
}


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
    if "/" not in name:
        raise UnknownPreset(
            f"unknown CLIP model {name!r}; use one of {', '.join(CLIP_PRESETS)} or an open_clip "
            "'MODEL/TAG' pair such as ViT-B-32/laion2b_s34b_b79k"
        )
    import open_clip

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


def clip_name_for_id(model_id: str) -> str:
    """The CLIP preset name or open_clip 'MODEL/TAG' that produces embeddings labelled ``model_id``."""
    for name, spec in CLIP_PRESETS.items():
        if spec.id == model_id:
            return name
    return model_id


@dataclass(frozen=True)
class BackendPreset:
    """A CLIP-steered optimisation backend: its model (architecture and weights) and the settings that suit it."""

    name: str
    backend: str  # "siren", "vqgan" or "biggan"
    clip: str
    # The backend's settings a user leaves unset take these values.
    defaults: dict
    config: dict = field(default_factory=dict)
    weights: WeightsFile | None = None
    description: str = ""


# The ImageNet f16 16384 VQGAN of Esser, Rombach & Ommer (taming-transformers), as VQGAN-CLIP
# used it; its config (the published model.yaml) is written out here, its checkpoint downloaded.
VQGAN_IMAGENET_16384 = BackendPreset(
    name="vqgan-imagenet-16384", backend="vqgan", clip="vit-b-32",
    config=dict(embed_dim=256, n_embed=16384, image_size=256,
                ddconfig=dict(double_z=False, z_channels=256, resolution=256, in_channels=3, out_ch=3, ch=128,
                              ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2, attn_resolutions=[16], dropout=0.0)),
    weights=WeightsFile(filename="vqgan_imagenet_f16_16384.ckpt",
                        url="https://heibox.uni-heidelberg.de/d/a7530b09fed84f80a887/files/?p=%2Fckpts%2Flast.ckpt&dl=1"),
    defaults=dict(size=256, iterations=500, lr=0.1, cutn=32, cut_pow=1.0),
    description="VQGAN-CLIP on the ImageNet f16 16384 VQGAN (taming-transformers)",
)

# BigGAN-deep (Brock et al. 2019) as pytorch-pretrained-biggan converted it; the layer lists are
# those of its published config files.
_BIGGAN_LAYERS = {
    128: [(False, 16, 16), (True, 16, 16), (False, 16, 16), (True, 16, 8), (False, 8, 8), (True, 8, 4),
          (False, 4, 4), (True, 4, 2), (False, 2, 2), (True, 2, 1)],
    256: [(False, 16, 16), (True, 16, 16), (False, 16, 16), (True, 16, 8), (False, 8, 8), (True, 8, 8),
          (False, 8, 8), (True, 8, 4), (False, 4, 4), (True, 4, 2), (False, 2, 2), (True, 2, 1)],
    512: [(False, 16, 16), (True, 16, 16), (False, 16, 16), (True, 16, 8), (False, 8, 8), (True, 8, 8),
          (False, 8, 8), (True, 8, 4), (False, 4, 4), (True, 4, 2), (False, 2, 2), (True, 2, 1),
          (False, 1, 1), (True, 1, 1)],
}


def _biggan_deep(size: int) -> BackendPreset:
    return BackendPreset(
        name=f"biggan-deep-{size}", backend="biggan", clip="vit-b-32",
        config=dict(output_dim=size, z_dim=128, class_embed_dim=128, channel_width=128, num_classes=1000,
                    layers=_BIGGAN_LAYERS[size], attention_layer_position=8, eps=1e-4, n_stats=51),
        weights=WeightsFile(filename=f"biggan-deep-{size}-pytorch_model.bin",
                            url=f"https://s3.amazonaws.com/models.huggingface.co/biggan/biggan-deep-{size}-pytorch_model.bin"),
        defaults=dict(iterations=1050, lr=0.07, cutn=64, cut_pow=1.0, truncation=1.0),
        description=f"big-sleep on BigGAN-deep {size}x{size} (ImageNet, 1000 classes)",
    )


SIREN = BackendPreset(
    name="siren", backend="siren", clip="vit-b-32",
    defaults=dict(size=512, hidden=256, layers=16, iterations=1050, lr=1e-5, cutn=32, cut_pow=1.0),
    description="deep-daze: a SIREN fitted to CLIP (no weights but CLIP's)",
)
SIREN_TINY = BackendPreset(
    name="siren-tiny", backend="siren", clip="tiny",
    defaults=dict(size=32, hidden=64, layers=4, iterations=60, lr=1e-3, cutn=8, cut_pow=1.0),
    description="a small SIREN fitted to the tiny CLIP (offline demo and tests)",
)


# Trained by scripts/train_tiny_vqgan.py on drawn shapes: the same taming architecture at 32x32 (f4).
VQGAN_TINY = BackendPreset(
    name="vqgan-tiny", backend="vqgan", clip="tiny",
    config=dict(embed_dim=32, n_embed=512, image_size=32,
                ddconfig=dict(double_z=False, z_channels=32, resolution=32, in_channels=3, out_ch=3, ch=32,
                              ch_mult=[1, 2, 2], num_res_blocks=1, attn_resolutions=[8], dropout=0.0)),
    weights=WeightsFile(filename="tiny-vqgan.pt", bundled=TINY_DIR / "tiny-vqgan.pt", size=2_168_698,
                        sha256="0bb8b8e062c949aaa5207d1341ab2acc017d6b131565306f2d1b9ab9af9848e0"),
    defaults=dict(size=32, iterations=40, lr=0.1, cutn=8, cut_pow=1.0),
    description="tiny 32x32 VQGAN trained on drawn coloured shapes (offline demo and tests)",
)

# Trained by scripts/train_tiny_biggan.py on drawn shapes: the BigGAN-deep architecture at 32x32,
# one class per colour, shape and background.
BIGGAN_TINY = BackendPreset(
    name="biggan-tiny", backend="biggan", clip="tiny",
    config=dict(output_dim=32, z_dim=32, class_embed_dim=32, channel_width=16, num_classes=400,
                layers=[(True, 16, 8), (True, 8, 4), (False, 4, 2), (True, 2, 1)], attention_layer_position=2,
                eps=1e-4, n_stats=51),
    weights=WeightsFile(filename="tiny-biggan.pt", bundled=TINY_DIR / "tiny-biggan.pt", size=1_322_507,
                        sha256="5776266868c107a3dc8c1d17756f0732c6b9c68185b3a15c8485977317ef35c0"),
    defaults=dict(iterations=40, lr=0.07, cutn=8, cut_pow=1.0, truncation=1.0),
    description="tiny 32x32 BigGAN-deep-architecture generator trained on drawn coloured shapes (offline demo and tests)",
)

BACKEND_PRESETS = {p.name: p for p in (VQGAN_IMAGENET_16384, VQGAN_TINY, _biggan_deep(128), _biggan_deep(256),
                                       _biggan_deep(512), BIGGAN_TINY, SIREN, SIREN_TINY)}


def backend_preset(name: str, backend: str | None = None) -> BackendPreset:
    """Look up an optimisation backend's preset by name (of the given backend, if one is named)."""
    presets = {k: p for k, p in BACKEND_PRESETS.items() if backend is None or p.backend == backend}
    try:
        return presets[name]
    except KeyError:
        what = f"{backend} preset" if backend else "backend preset"
        raise UnknownPreset(f"unknown {what} {name!r}; choose one of: {', '.join(presets)}") from None
