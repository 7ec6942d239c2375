import torch
import pytest

from generate import presets as P
from generate.errors import UnknownPreset, WeightsCorrupt, WeightsMissing
from generate.models import build_unet, load_clip, load_unet


def test_uncond_256_builds_the_real_architecture_offline(instance):
    model = build_unet(P.UNCOND_256)
    assert sum(p.numel() for p in model.parameters()) == 552_814_086


def test_missing_real_weights_give_one_clear_message(instance):
    with pytest.raises(WeightsMissing) as e:
        load_unet(P.UNCOND_256, instance, torch.device("cpu"))
    msg = str(e.value)
    assert "\n" not in msg
    assert "256x256_diffusion_uncond.pt" in msg and P.UNCOND_256.weights.url in msg
    assert str(instance / "models" / "256x256_diffusion_uncond.pt") in msg


def test_missing_clip_weights_give_one_clear_message(instance):
    with pytest.raises(WeightsMissing, match=r"ViT-B-16/openai.*huggingface.co.*--clip ViT-B-16/"):
        load_clip(P.clip_spec("vit-b-16"), instance, torch.device("cpu"))


def test_tiny_preset_loads_through_the_same_path(instance):
    unet = load_unet(P.TINY_32, instance, torch.device("cpu"))
    assert not any(p.requires_grad for p in unet.parameters())
    # trained weights: the zero-initialised output layer has been learned
    assert unet.out[-1].weight.abs().sum() > 0
    clip = load_clip(P.clip_spec("tiny"), instance, torch.device("cpu"))
    assert clip.image_size == 32 and clip.id.startswith("tiny-clip/")


def test_corrupt_and_mismatched_checkpoints_are_refused(instance, tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsCorrupt, match="not a loadable checkpoint"):
        load_unet(P.TINY_32, instance, torch.device("cpu"), checkpoint=str(junk))
    wrong = tmp_path / "wrong.pt"
    sd = build_unet(P.TINY_32).state_dict()
    sd["out.2.weight"] = torch.zeros(1)
    torch.save(sd, wrong)
    with pytest.raises(WeightsCorrupt, match=r"mis-shaped"):
        load_unet(P.TINY_32, instance, torch.device("cpu"), checkpoint=str(wrong))


@pytest.mark.parametrize("name", ["nope", "ViT-B-32/not-a-tag", "Not-A-Model/openai"])
def test_unknown_clip_names(name):
    with pytest.raises(UnknownPreset):
        P.clip_spec(name)


def test_unknown_diffusion_preset():
    with pytest.raises(UnknownPreset, match="choose one of"):
        P.diffusion_preset("uncond-1024")


def test_download_goes_to_the_cache_verified_with_a_checksum_record(instance, monkeypatch, tmp_path):
    # A local "server": the URL is a file:// URL, so the real download path runs without a network.
    src = tmp_path / "served.pt"
    torch.save(build_unet(P.TINY_32).state_dict(), src)
    preset = P.DiffusionPreset("served", P.TINY_32.config, P.WeightsFile("served.pt", url=src.as_uri()))
    monkeypatch.setattr(P, "_online", lambda host, timeout=3.0: True)
    path = P.diffusion_weights_path(preset, instance, progress=False)
    assert path == instance / "models" / "served.pt" and path.read_bytes() == src.read_bytes()
    assert not list((instance / "models").glob("*.part"))
    meta = __import__("json").loads((instance / "models" / "served.pt.sha256.json").read_text())
    assert meta["size"] == src.stat().st_size and len(meta["sha256"]) == 64
    unet = load_unet(preset, instance, torch.device("cpu"))
    assert sum(p.numel() for p in unet.parameters()) > 0
    with open(path, "ab") as f:  # damaged later: caught before use
        f.write(b"x")
    with pytest.raises(WeightsCorrupt, match="download it afresh"):
        load_unet(preset, instance, torch.device("cpu"))
