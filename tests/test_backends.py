"""The optimisation backends (SIREN, VQGAN, BigGAN + CLIP) on the tiny models, through their real code paths."""

import numpy as np
import pytest
import torch

from gallery.errors import BadRequest, RecipeError, WeightsCorrupt, WeightsMissing
from gallery.recipe import Recipe
from generate import presets as P
from generate import weights as W
from generate.backends import generator_class
from generate.backends.biggan import BigganSettings, build_biggan
from generate.backends.siren import SirenSettings
from generate.backends.vqgan import VqganSettings, build_vqgan
from generate.diffusion import to_uint8

CPU = torch.device("cpu")
TINY = {"siren": "siren-tiny", "vqgan": "vqgan-tiny", "biggan": "biggan-tiny"}
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


@pytest.mark.parametrize("backend", ["siren", "vqgan", "biggan"])
def test_red_prompts_make_redder_images_than_blue_prompts(steered, backend):
    images, _ = steered(backend)
    red, blue = redness(images["red"]), redness(images["blue"])
    wins = int((red > blue).sum())
    assert wins == len(SEEDS), f"{backend}: red beat blue in only {wins}/{len(SEEDS)} seed pairs ({red} vs {blue})"
    assert red.mean() - blue.mean() > 20


@pytest.mark.parametrize("backend", ["siren", "vqgan", "biggan"])
def test_the_clip_loss_falls_over_the_iterations(steered, backend):
    _, curves = steered(backend)
    for colour, losses in curves.items():
        assert len(losses) == P.BACKEND_PRESETS[TINY[backend]].defaults["iterations"]
        first, last = np.mean(losses[:5]), np.mean(losses[-5:])
        assert last < first - 0.05, f"{backend} {colour}: loss went from {first:.3f} to {last:.3f}"


@pytest.mark.parametrize("backend", ["siren", "vqgan", "biggan"])
def test_an_image_depends_only_on_its_seed(models, backend):
    gen = generator(models, backend, settings={"iterations": 4})
    pair = gen.run([5, 6])
    assert torch.equal(pair, gen.run([5, 6]))
    assert torch.equal(pair[0], gen.run([5])[0])
    assert torch.equal(pair[1], gen.run([6])[0])
    assert (pair[0] - pair[1]).abs().mean() > 0.02


def test_callback_sees_every_iteration_and_the_current_images(models):
    steps = []
    gen = generator(models, "vqgan", settings={"iterations": 3, "frame_every": 2})
    final = gen.run([1, 2], steps.append)
    assert [(s.index, s.total) for s in steps] == [(0, 3), (1, 3), (2, 3)]
    assert all(s.pred_xstart.shape == final.shape and len(s.losses) == 2 for s in steps)
    assert gen.frame_every == 2
    assert not torch.equal(steps[0].pred_xstart, final)


def test_an_init_image_keeps_its_composition_in_vqgan(models, tmp_path):
    from PIL import Image

    from generate.tiny.shapes import Drawing, draw

    path = tmp_path / "init.png"
    draw(Drawing("yellow", "circle", "purple"), 32).save(path)
    init = np.asarray(Image.open(path).convert("RGB")).astype(float)
    err = lambda x: np.abs(to_uint8(x).astype(float) - init).mean()  # noqa: E731
    kept = generator(models, "vqgan", init_image=str(path), settings={"iterations": 5, "noise": 0.2}).run([3])
    free = generator(models, "vqgan", settings={"iterations": 5}).run([3])
    assert err(kept) < 0.6 * err(free)


# Real architectures, built on the meta device: no weights, no memory, no network.

def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_the_real_vqgan_has_the_published_size():
    with torch.device("meta"):
        model = build_vqgan(P.BACKEND_PRESETS["vqgan-imagenet-16384"].config)
    assert _count(model.decoder) == 42_449_795
    assert model.quantize.embedding.weight.shape == (16384, 256)
    assert model.factor == 16
    assert _count(model) == 76_073_859


@pytest.mark.parametrize("size,millions,exact", [(128, 50.4, 50_388_609), (256, 55.9, 55_880_833),
                                                  (512, 56.2, 56_163_905)])
def test_the_real_biggans_have_the_published_sizes(size, millions, exact):
    preset = P.BACKEND_PRESETS[f"biggan-deep-{size}"]
    with torch.device("meta"):
        model = build_biggan(preset.config)
    assert round(_count(model) / 1e6, 1) == millions  # as pytorch-pretrained-biggan publishes them
    assert _count(model) == exact


@pytest.mark.parametrize("name", ["vqgan-imagenet-16384", "biggan-deep-256"])
def test_missing_real_weights_say_where_to_get_them(models, inst, name):
    preset = P.BACKEND_PRESETS[name]
    with pytest.raises(WeightsMissing) as e:
        W.fetch_backend(preset, inst, progress=False)  # the tests are offline
    msg = str(e.value)
    assert "\n" not in msg and preset.weights.url in msg and str(inst.models_dir / preset.weights.filename) in msg
    with pytest.raises(WeightsMissing, match="not cached"):
        generator_class(preset.backend)(Recipe(prompt="a cat", model=name), models, CPU)


def _tiny_state(backend):
    preset = P.BACKEND_PRESETS[TINY[backend]]
    return torch.load(preset.weights.bundled, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("backend", ["vqgan", "biggan"])
@pytest.mark.parametrize("damage,message", [("missing", "1 missing"), ("shape", "mis-shaped"),
                                            ("truncated", "not a loadable checkpoint")])
def test_a_damaged_checkpoint_gets_a_clear_error(models, tmp_path, backend, damage, message):
    path = tmp_path / f"{backend}-{damage}.pt"
    sd = _tiny_state(backend)
    key = sorted(sd)[3]
    if damage == "missing":
        del sd[key]
    elif damage == "shape":
        sd[key] = torch.zeros(*sd[key].shape, 2)
    torch.save(sd, path)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(WeightsCorrupt) as e:
        generator(models, backend, checkpoint=str(path))
    assert message in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


class ModelCheckpoint:
    """A stand-in for a Lightning callback pickled into a training checkpoint."""

    def __init__(self):
        self.best_model_score = 0.5


def test_a_lightning_checkpoint_loads_without_running_its_pickled_objects(models, tmp_path):
    # taming-transformers' last.ckpt: the weights under "state_dict", beside the loss networks'
    # weights and pickled objects of classes that weights-only loading refuses.
    sd = {k: v.float() for k, v in _tiny_state("vqgan").items()}
    ckpt = {"state_dict": {**sd, "loss.discriminator.main.0.weight": torch.zeros(4, 3, 4, 4)},
            "callbacks": {"ModelCheckpoint": ModelCheckpoint()}, "global_step": 123, "epoch": 4}
    path = tmp_path / "last.ckpt"
    torch.save(ckpt, path)
    gen = generator(models, "vqgan", checkpoint=str(path), settings={"iterations": 2})
    bundled = generator(models, "vqgan", settings={"iterations": 2})
    assert torch.equal(gen.run([4]), bundled.run([4]))


@pytest.mark.parametrize("backend", ["vqgan", "biggan"])
def test_a_changed_bundled_file_is_caught(backend, inst, tmp_path):
    import dataclasses

    preset = P.BACKEND_PRESETS[TINY[backend]]
    copy = tmp_path / preset.weights.filename
    data = bytearray(preset.weights.bundled.read_bytes())
    data[-100] ^= 0xFF
    copy.write_bytes(bytes(data))
    moved = dataclasses.replace(preset, weights=dataclasses.replace(preset.weights, bundled=copy))
    with pytest.raises(WeightsCorrupt, match="sha256"):
        W.locate_backend(moved, inst)


@pytest.mark.parametrize("backend,settings,message", [
    ("siren", {"iterations": -1}, "iterations must be a whole number from 1 to 100000, not -1"),
    ("vqgan", {"lr": 0}, "lr must be a number above 0 and at most 10, not 0"),
    ("biggan", {"truncation": 1.5}, "truncation must be a number above 0 and at most 1, not 1.5"),
    ("vqgan", {"noise": -0.1}, "noise must be a number from 0 to 1, not -0.1"),
    ("siren", {"frame_every": 0}, "frame_every must be a whole number from 1 to 100000, not 0"),
    ("biggan", {"size": 64}, "unknown setting 'size'"),
    ("vqgan", {"colour": "red"}, "unknown setting 'colour'"),
])
def test_bad_settings_are_one_line_errors(models, backend, settings, message):
    with pytest.raises(RecipeError) as e:
        generator(models, backend, settings=settings)
    assert str(e.value) == message


def test_settings_that_contradict_each_other_are_refused(models):
    with pytest.raises(BadRequest, match="multiple of 4"):
        generator(models, "vqgan", settings={"size": 30})
    with pytest.raises(BadRequest, match="needs an init image"):
        generator(models, "vqgan", settings={"noise": 0.5})
    with pytest.raises(BadRequest, match="no init image"):
        generator(models, "siren", init_image="x.png")
    with pytest.raises(BadRequest, match="unknown backend 'dall-e'"):
        generator_class("dall-e")


def test_settings_round_trip_and_know_their_defaults():
    s = VqganSettings.from_dict({"iterations": 7, "noise": 0.25})
    assert VqganSettings.from_dict(s.to_dict()) == s and s.cutn == 16 and s.size == 256
    assert SirenSettings.resolve(P.BACKEND_PRESETS["siren"].defaults).layers == 16
    assert BigganSettings.resolve({"lr": 0.07}, {"iterations": 3}) == BigganSettings(iterations=3, lr=0.07)
    with pytest.raises(BadRequest, match="unknown siren preset 'nope'; choose one of: siren, siren-tiny"):
        generator_class("siren")(Recipe(prompt="a cat", model="nope"), None, CPU)
