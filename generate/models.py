"""Build the guided_diffusion UNet and the open_clip model from presets, and load their weights.

Real presets and the tiny preset go through the same functions: resolve a weights path
(bundled, cached, downloaded or given), verify it against the architecture, load it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from gallery.errors import BadRequest, WeightsCorrupt
from gallery.instance import Instance

from . import presets as P
from . import weights as W


def pick_device(name: str = "auto") -> torch.device:
    """Resolve 'auto' to cuda, then mps, then cpu; pass other names through after checking them."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise BadRequest(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BadRequest("device cuda was asked for but CUDA is not available")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise BadRequest("device mps was asked for but MPS is not available")
    return dev


def diffusion_options(preset: P.DiffusionPreset) -> dict:
    """guided_diffusion's full option dict for a preset (library defaults, then the preset's)."""
    from guided_diffusion.script_util import model_and_diffusion_defaults

    opts = model_and_diffusion_defaults()
    opts.update(preset.config)
    return opts


def build_unet(preset: P.DiffusionPreset) -> torch.nn.Module:
    """The preset's UNet with freshly initialised weights (no file, no network)."""
    from guided_diffusion.script_util import create_model

    o = diffusion_options(preset)
    return create_model(
        o["image_size"], o["num_channels"], o["num_res_blocks"],
        channel_mult=o["channel_mult"], learn_sigma=o["learn_sigma"], class_cond=o["class_cond"],
        use_checkpoint=False, attention_resolutions=o["attention_resolutions"],
        num_heads=o["num_heads"], num_head_channels=o["num_head_channels"],
        num_heads_upsample=o["num_heads_upsample"], use_scale_shift_norm=o["use_scale_shift_norm"],
        dropout=o["dropout"], resblock_updown=o["resblock_updown"], use_fp16=False,
        use_new_attention_order=o["use_new_attention_order"],
    )


def build_diffusion(preset: P.DiffusionPreset, steps: int | None = None, sampler: str = "ddpm"):
    """A (respaced) GaussianDiffusion for the preset: ``steps`` evenly spaced DDPM or DDIM steps."""
    from guided_diffusion.script_util import create_gaussian_diffusion

    o = diffusion_options(preset)
    if steps is None:
        respacing = ""
    elif sampler == "ddim":
        respacing = f"ddim{steps}"
    else:
        respacing = str(steps)
    return create_gaussian_diffusion(
        steps=o["diffusion_steps"], learn_sigma=o["learn_sigma"], noise_schedule=o["noise_schedule"],
        use_kl=o["use_kl"], predict_xstart=o["predict_xstart"], rescale_timesteps=o["rescale_timesteps"],
        rescale_learned_sigmas=o["rescale_learned_sigmas"], timestep_respacing=respacing,
    )


def _read_state_dict(path: Path) -> dict:
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise WeightsCorrupt(f"{path} is not a loadable checkpoint ({type(e).__name__}): delete it and retry") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise WeightsCorrupt(f"{path} holds no state dict")
    return sd


def check_state_dict(want: dict, sd: dict, path: Path) -> None:
    """Raise WeightsCorrupt unless sd has exactly want's keys, with the same shapes."""
    missing = sorted(set(want) - set(sd))
    extra = sorted(set(sd) - set(want))
    wrong = [k for k in want if k in sd and tuple(sd[k].shape) != tuple(want[k].shape)]
    if missing or extra or wrong:
        detail = (missing[:1] and f"missing {missing[0]}") or (extra[:1] and f"unexpected {extra[0]}") \
            or f"{wrong[0]} has shape {tuple(sd[wrong[0]].shape)}, expected {tuple(want[wrong[0]].shape)}"
        raise WeightsCorrupt(
            f"{path} does not fit this architecture ({len(missing)} missing, {len(extra)} unexpected, "
            f"{len(wrong)} mis-shaped keys; {detail})"
        )


def verify_unet_weights(preset: P.DiffusionPreset, path: Path) -> None:
    """Check a checkpoint against the preset's architecture without allocating the model."""
    with torch.device("meta"):
        want = build_unet(preset).state_dict()
    check_state_dict(want, _read_state_dict(path), path)


def load_state_dict_checked(model: torch.nn.Module, path: Path) -> None:
    """Load a state dict into model after checking its keys and shapes match exactly."""
    sd = _read_state_dict(path)
    check_state_dict(model.state_dict(), sd, path)
    model.load_state_dict(sd)


def load_unet(preset: P.DiffusionPreset, path: Path, device: torch.device) -> torch.nn.Module:
    """Build the preset's UNet and load the checked weights at path, frozen, in eval mode, on device."""
    model = build_unet(preset)
    load_state_dict_checked(model, path)
    return model.requires_grad_(False).eval().to(device)


@dataclass
class Clip:
    """A loaded open_clip model with what guidance and search need around it."""

    id: str
    model: torch.nn.Module
    tokenizer: object
    image_size: int
    mean: torch.Tensor
    std: torch.Tensor

    @property
    def device(self) -> torch.device:
        """Device the model's weights are on."""
        return next(self.model.parameters()).device

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise images in [0, 1] the way this CLIP was trained."""
        return (x - self.mean.to(x)) / self.std.to(x)

    @torch.no_grad()
    def encode_text(self, texts: list[str], real_tokens_only: bool = False) -> torch.Tensor:
        """Unit-norm float32 text embeddings.

        ``real_tokens_only`` (for search, where speed matters and 1e-6 does not) skips the padding;
        guidance keeps open_clip's own path, so images reproduce bit for bit across versions.
        """
        tokens = self.tokenizer(texts).to(self.device)
        encoded = encode_real_tokens(self.model, tokens) if real_tokens_only else self.model.encode_text(tokens)
        return torch.nn.functional.normalize(encoded.float(), dim=-1)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings (not normalised) of images in [0, 1] already at image_size; keeps autograd."""
        return self.model.encode_image(self.normalize(x))

    @torch.no_grad()
    def embed_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-norm float32 embeddings of images in [0, 1] of any size (resized, centre view)."""
        x = torch.nn.functional.interpolate(x.to(self.device).float(), size=(self.image_size, self.image_size),
                                            mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        return torch.nn.functional.normalize(self.encode_image(x).float(), dim=-1)


def encode_real_tokens(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's ``encode_text``, run over the real tokens only instead of the whole context.

    CLIP's text transformer is causal and pools the features at the end-of-text token (the
    highest id of each row), so nothing after that token can change the result: dropping the
    padding beyond the longest prompt of the batch (positional embedding and mask sliced to
    match) gives the same embedding, for a fraction of the work on a short prompt. Models of
    another shape take open_clip's own path.
    """
    mask = getattr(model, "attn_mask", None)
    if getattr(model, "text_pool_type", None) != "argmax" or mask is None or not hasattr(model, "token_embedding"):
        return model.encode_text(tokens)
    n = int(tokens.argmax(dim=-1).max()) + 1
    tokens = tokens[:, :n]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:n].to(cast)
    x = model.ln_final(model.transformer(x, attn_mask=mask[:n, :n]))
    x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
    if model.text_projection is None:
        return x
    return model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) else x @ model.text_projection


def load_clip(spec: P.ClipSpec, path: Path, device: torch.device) -> Clip:
    """Create an open_clip model from a spec and load its weights (at path) through open_clip."""
    import open_clip

    if spec.config_file is not None:
        P.register_tiny_clip_config()
    try:
        model, _, _ = open_clip.create_model_and_transforms(spec.model, pretrained=str(path))
    except RuntimeError as e:
        raise WeightsCorrupt(f"{path} could not be loaded into {spec.model}: {str(e).splitlines()[0][:200]}") from None
    model = model.requires_grad_(False).eval().to(device)
    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg["size"]
    size = size[0] if isinstance(size, (tuple, list)) else size
    return Clip(
        id=spec.id, model=model, tokenizer=open_clip.get_tokenizer(spec.model), image_size=int(size),
        mean=torch.tensor(cfg["mean"]).view(1, 3, 1, 1), std=torch.tensor(cfg["std"]).view(1, 3, 1, 1),
    )


class ModelCache:
    """Loads models lazily, once per process, keyed by what they are; ``close()`` releases them.

    With ``fetch`` (a worker, the CLI) missing weights are downloaded on first use; without it
    (the site) they must already be cached, so no request ever waits on a download.
    """

    def __init__(self, instance: Instance, progress: bool = True, fetch: bool = False):
        self.instance = instance
        self.progress = progress
        self.fetch = fetch
        self._unets: dict = {}
        self._clips: dict = {}
        self._others: dict = {}  # the optimising backends' models (a VQGAN, a BigGAN), by what they are

    def other(self, key: tuple, build):
        """A model of another kind, built by ``build()`` on first use of ``key``."""
        if key not in self._others:
            self._others[key] = build()
        return self._others[key]

    def unet_path(self, preset: P.DiffusionPreset, checkpoint: str | None = None) -> Path:
        """Where the preset's weights are (fetched first if this cache may fetch)."""
        if self.fetch:
            return W.fetch_diffusion(preset, self.instance, checkpoint, progress=self.progress)
        return W.locate_diffusion(preset, self.instance, checkpoint)

    def clip_path(self, spec: P.ClipSpec) -> Path:
        """Where a CLIP's weights are (fetched first if this cache may fetch)."""
        if self.fetch:
            return W.fetch_clip(spec, self.instance, progress=self.progress)
        return W.locate_clip(spec, self.instance)

    def unet(self, preset: P.DiffusionPreset, device: torch.device, checkpoint: str | None = None):
        """The preset's UNet with its weights, loaded on first use."""
        key = (preset.name, checkpoint, str(device))
        if key not in self._unets:
            self._unets[key] = load_unet(preset, self.unet_path(preset, checkpoint), device)
        return self._unets[key]

    def clip(self, name: str, device: torch.device) -> Clip:
        """A CLIP model by preset name or open_clip 'MODEL/TAG', loaded on first use."""
        key = (name, str(device))
        if key not in self._clips:
            spec = P.clip_spec(name)
            self._clips[key] = load_clip(spec, self.clip_path(spec), device)
        return self._clips[key]

    def put_clip(self, name: str, device: torch.device, clip: Clip) -> None:
        """Use a CLIP built elsewhere under this name (a benchmark's random-weight model, say)."""
        self._clips[(name, str(device))] = clip

    def close(self) -> None:
        """Drop every loaded model (and cached GPU memory)."""
        self._unets.clear()
        self._clips.clear()
        self._others.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
