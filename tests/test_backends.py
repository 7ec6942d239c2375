"""The optimisation backends (SIREN + CLIP) on the tiny models, through their real code paths."""

import numpy as np
import pytest
import torch

from gallery.errors import BadRequest, RecipeError
from gallery.recipe import Recipe
from generate import presets as P
from generate.backends import generator_class
from generate.backends.siren import SirenSettings
from generate.diffusion import to_uint8

CPU = torch.device("cpu")
TINY = {"siren": "siren-tiny"}
SEEDS = [11, 12, 13, 14]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The tiny models are far too small to gain from a second thread, and lose much to contention.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def redness(pixels: np.ndarray) -> np.ndarray:
    """Mean red minus mean blue channel of each uint8 image: a plain pixel statistic, not CLIP."""
    p = pixels.astype(np.float64)
    return (p[..., 0] - p[..., 2]).mean(axis=(1, 2))


def generator(models, backend, prompt="a red circle on a white background", settings=None, **kw):
    """The backend's generator on its tiny preset."""
    recipe = Recipe(prompt=prompt, model=TINY[backend], **kw)
    return generator_class(backend)(recipe, models, CPU, settings=settings)


@pytest.fixture(scope="module")
def steered(models):
    """Per backend: the red and blue images of paired seeds, and the mean CLIP loss per iteration."""
    done = {}

    def run(backend):
        if backend not in done:
            out, curves = {}, {}
            for colour in ("red", "blue"):
                losses = []
                gen = generator(models, backend, f"a {colour} square on a white background")
                x = gen.run(SEEDS, lambda step: losses.append(float(np.mean(step.losses))))
                assert torch.isfinite(x).all() and x.shape == (len(SEEDS), 3, 32, 32)
                out[colour], curves[colour] = to_uint8(x), losses
            done[backend] = out, curves
        return done[backend]

    return run


@pytest.mark.parametrize("backend", ["siren"])
def test_red_prompts_make_redder_images_than_blue_prompts(steered, backend):
    images, _ = steered(backend)
    red, blue = redness(images["red"]), redness(images["blue"])
    wins = int((red > blue).sum())
    assert wins == len(SEEDS), f"{backend}: red beat blue in only {wins}/{len(SEEDS)} seed pairs ({red} vs {blue})"
    assert red.mean() - blue.mean() > 20


@pytest.mark.parametrize("backend", ["siren"])
def test_the_clip_loss_falls_over_the_iterations(steered, backend):
    _, curves = steered(backend)
    for colour, losses in curves.items():
        assert len(losses) == P.BACKEND_PRESETS[TINY[backend]].defaults["iterations"]
        first, last = np.mean(losses[:5]), np.mean(losses[-5:])
        assert last < first - 0.05, f"{backend} {colour}: loss went from {first:.3f} to {last:.3f}"


@pytest.mark.parametrize("backend", ["siren"])
def test_an_image_depends_only_on_its_seed(models, backend):
    gen = generator(models, backend, settings={"iterations": 4})
    pair = gen.run([5, 6])
    assert torch.equal(pair, gen.run([5, 6]))
    assert torch.equal(pair[0], gen.run([5])[0])
    assert torch.equal(pair[1], gen.run([6])[0])
    assert (pair[0] - pair[1]).abs().mean() > 0.02


@pytest.mark.parametrize("backend,settings,message", [
    ("siren", {"iterations": -1}, "iterations must be a whole number from 1 to 100000, not -1"),
    ("siren", {"lr": 0}, "lr must be a number above 0 and at most 10, not 0"),
    ("siren", {"frame_every": 0}, "frame_every must be a whole number from 1 to 100000, not 0"),
    ("siren", {"colour": "red"}, "unknown setting 'colour'"),
])
def test_bad_settings_are_one_line_errors(models, backend, settings, message):
    with pytest.raises(RecipeError) as e:
        generator(models, backend, settings=settings)
    assert str(e.value) == message


def test_settings_that_contradict_each_other_are_refused(models):
    with pytest.raises(BadRequest, match="no init image"):
        generator(models, "siren", init_image="x.png")
    with pytest.raises(BadRequest, match="unknown backend 'dall-e'"):
        generator_class("dall-e")


def test_settings_round_trip_and_know_their_defaults():
    s = SirenSettings.from_dict({"iterations": 7, "hidden": 32})
    assert SirenSettings.from_dict(s.to_dict()) == s and s.cutn == 16 and s.size == 32
    assert SirenSettings.resolve(P.BACKEND_PRESETS["siren"].defaults).layers == 16
    assert SirenSettings.resolve({"lr": 0.07}, {"iterations": 3}) == SirenSettings(iterations=3, lr=0.07)
    with pytest.raises(BadRequest, match="unknown siren preset 'nope'; choose one of: siren, siren-tiny"):
        generator_class("siren")(Recipe(prompt="a cat", model="nope"), None, CPU)
