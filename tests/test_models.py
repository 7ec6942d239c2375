import json

import pytest
import torch

from gallery.errors import UnknownPreset, WeightsCorrupt, WeightsMissing
from generate import presets as P
from generate import weights as W
from generate.models import ModelCache, build_unet, load_unet


def test_uncond_256_builds_the_real_architecture_offline(instance):
    model = build_unet(P.UNCOND_256)
    assert sum(p.numel() for p in model.parameters()) == 552_814_086


def test_missing_real_weights_give_one_clear_message(inst):
    for cache in (ModelCache(inst, fetch=False), ModelCache(inst, fetch=True)):  # offline in tests
        with pytest.raises(WeightsMissing) as e:
            cache.unet(P.UNCOND_256, torch.device("cpu"))
        msg = str(e.value)
        assert "\n" not in msg
        assert "256x256_diffusion_uncond.pt" in msg and P.UNCOND_256.weights.url in msg
        assert str(inst.models_dir / "256x256_diffusion_uncond.pt") in msg
    assert not inst.models_dir.exists() or not list(inst.models_dir.iterdir())


def test_missing_clip_weights_give_one_clear_message(inst):
    with pytest.raises(WeightsMissing, match=r"ViT-B-16/openai.*huggingface.co.*--clip ViT-B-16/"):
        ModelCache(inst).clip("vit-b-16", torch.device("cpu"))


def test_tiny_preset_loads_through_the_same_path(inst):
    cache = ModelCache(inst)
    unet = cache.unet(P.TINY_32, torch.device("cpu"))
    assert not any(p.requires_grad for p in unet.parameters())
    # trained weights: the zero-initialised output layer has been learned
    assert unet.out[-1].weight.abs().sum() > 0
    clip = cache.clip("tiny", torch.device("cpu"))
    assert clip.image_size == 32 and clip.id.startswith("tiny-clip/")


def test_corrupt_and_mismatched_checkpoints_are_refused(inst, tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsCorrupt, match="not a loadable checkpoint"):
        ModelCache(inst).unet(P.TINY_32, torch.device("cpu"), checkpoint=str(junk))
    wrong = tmp_path / "wrong.pt"
    sd = build_unet(P.TINY_32).state_dict()
    sd["out.2.weight"] = torch.zeros(1)
    torch.save(sd, wrong)
    with pytest.raises(WeightsCorrupt, match=r"mis-shaped"):
        load_unet(P.TINY_32, wrong, torch.device("cpu"))


@pytest.mark.parametrize("name", ["nope", "ViT-B-32/not-a-tag", "Not-A-Model/openai"])
def test_unknown_clip_names(name):
    with pytest.raises(UnknownPreset):
        P.clip_spec(name)


def test_unknown_diffusion_preset():
    with pytest.raises(UnknownPreset, match="choose one of"):
        P.diffusion_preset("uncond-1024")


def _served_preset(tmp_path):
    # A local "server": the URL is a file:// URL, so the real download path runs without a network.
    src = tmp_path / "served.pt"
    torch.save(build_unet(P.TINY_32).state_dict(), src)
    return src, P.DiffusionPreset("served", P.TINY_32.config, P.WeightsFile("served.pt", url=src.as_uri()),
                                  clip="tiny", defaults=P.TINY_32.defaults)


def test_download_goes_to_the_cache_verified_with_a_checksum_record(inst, monkeypatch, tmp_path):
    src, preset = _served_preset(tmp_path)
    with pytest.raises(WeightsMissing, match="clip-curator fetch served"):  # looking never downloads
        W.locate_diffusion(preset, inst)
    monkeypatch.setattr(W, "online", lambda host, timeout=3.0: True)
    path = W.fetch_diffusion(preset, inst, progress=False)
    assert path == inst.models_dir / "served.pt" and path.read_bytes() == src.read_bytes()
    assert sorted(p.name for p in inst.models_dir.iterdir()) == ["served.pt", "served.pt.sha256.json"]
    meta = json.loads((inst.models_dir / "served.pt.sha256.json").read_text())
    assert meta["size"] == src.stat().st_size and len(meta["sha256"]) == 64
    unet = ModelCache(inst).unet(preset, torch.device("cpu"))
    assert sum(p.numel() for p in unet.parameters()) > 0
    with open(path, "ab") as f:  # damaged later: caught before use
        f.write(b"x")
    with pytest.raises(WeightsCorrupt, match="download it afresh"):
        ModelCache(inst).unet(preset, torch.device("cpu"))


def test_a_same_size_corruption_is_caught_by_the_checksum(inst, monkeypatch, tmp_path):
    _, preset = _served_preset(tmp_path)
    monkeypatch.setattr(W, "online", lambda host, timeout=3.0: True)
    path = W.fetch_diffusion(preset, inst, progress=False)
    W.locate_diffusion(preset, inst)  # unchanged: trusted without re-hashing
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsCorrupt, match="does not match its sha256"):
        W.locate_diffusion(preset, inst)


def test_bundled_tiny_weights_are_checked_against_their_published_checksum(tmp_path, monkeypatch):
    copy = tmp_path / "tiny-unet.pt"
    data = bytearray(P.TINY_32.weights.bundled.read_bytes())
    data[-100] ^= 0x01
    copy.write_bytes(bytes(data))
    with pytest.raises(WeightsCorrupt, match="sha256"):
        W.verify(copy, P.TINY_32.weights)
    W.verify(P.TINY_32.weights.bundled, P.TINY_32.weights)
