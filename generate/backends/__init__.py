"""CLIP-steered generators that optimise an image representation directly against CLIP.

Each backend fits one thing per seed to the prompt's CLIP targets with Adam over augmented
cutouts (``optimise``): a SIREN network (``siren``, deep-daze's method), a VQGAN latent grid
(``vqgan``, Crowson's VQGAN-CLIP) or BigGAN-deep's noise and class vectors (``biggan``,
big-sleep's method). Their generator classes share guided diffusion's interface:
``Generator(recipe, models, device, store, settings=...)``, ``run(seeds, callback)``.
"""
from __future__ import annotations

BACKENDS = ("siren", "vqgan", "biggan")


def generator_class(backend: str):
    """The generator class of a backend by name (imported on demand)."""
    from gallery.errors import BadRequest

    if backend == "siren":
        from .siren import SirenGenerator
        return SirenGenerator
    if backend == "vqgan":
        from .vqgan import VqganGenerator
        return VqganGenerator
    if backend == "biggan":
        from .biggan import BigganGenerator
        return BigganGenerator
    raise BadRequest(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
