"""Every backend through the queue: jobs, recipes in the PNG, reproduce from the file alone, bad settings."""
import json

import numpy as np
import pytest
from PIL import Image

FEW = {"siren-tiny": 10, "vqgan-tiny": 10, "biggan-tiny": 10}


@pytest.mark.parametrize("model", sorted(FEW))
def test_each_backend_makes_a_job_and_reproduces_it_from_its_png_alone(cli, instance, store, tmp_path, model):
    made = cli("generate", "--model", model, "--iterations", FEW[model], "--lr", 0.05, "-p", "a red circle",
               "--n", 2, "--seed", 3)
    assert made.exit_code == 0, made.output
    rows = store.images_for_job(1)
    recipe = json.loads(rows[0].recipe)
    assert recipe["backend"] == model.split("-")[0] and recipe["settings"]["iterations"] == FEW[model]
    assert recipe["settings"]["lr"] == 0.05 and recipe["version"] == 3 and recipe["clip_model"] == "tiny"
    first, second = (np.asarray(Image.open(instance / r.path)) for r in rows)
    assert not np.array_equal(first, second)  # seeds 3 and 4 are two images
    lone = tmp_path / "lone.png"
    lone.write_bytes((instance / rows[1].path).read_bytes())
    again = cli("reproduce", lone, "-o", tmp_path / "again.png")
    assert again.exit_code == 0 and "identical pixels" in again.output, again.output
    assert store.get_job(1).steps == FEW[model]  # progress counts the backend's iterations


@pytest.mark.parametrize("args, message", [
    (["--model", "vqgan-tiny", "--iterations", "-1"], "iterations must be a whole number from 1 to 100000"),
    (["--model", "siren-tiny", "--lr", "0"], "lr must be a number above 0"),
    (["--model", "vqgan-tiny", "--setting", "bogus=1"], "bogus is not a setting of vqgan (vqgan-tiny)"),
    (["--model", "biggan-tiny", "--setting", "truncation=2"], "truncation must be a number above 0 and at most 1"),
    (["--model", "vqgan-tiny", "--method", "ddim"], "--method is a guided diffusion setting; vqgan-tiny (vqgan) takes"),
    (["--model", "tiny", "--iterations", "5"], "not a setting of guided diffusion"),
    (["--model", "biggan-tiny", "--init", "1"], "takes no init image"),
    (["--model", "dall-e"], "unknown model preset 'dall-e'"),
])
def test_bad_backend_settings_get_one_line_and_record_nothing(cli, store, args, message):
    refused = cli("generate", *args, "-p", "a red circle", "--queue")
    lines = refused.output.strip().splitlines()
    assert refused.exit_code == 1 and len(lines) == 1 and message in lines[0], refused.output
    assert store.list_jobs() == []
