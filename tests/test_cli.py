"""Bad input: one clear line, a non-zero exit, and nothing written."""
import pytest

from cli import main

TINY = ["--model", "tiny", "--steps", "4"]
N_RANGE = "n must be a whole number from 1 to 10000"


@pytest.mark.parametrize("args, words", [
    (["-p", ""], "prompt is empty"),
    (["-p", "   "], "prompt is empty"),
    (["-p", "fish:abc"], "malformed weight"),
    (["-p", "fish:1|boat:-1"], "add up to zero"),
    (["-p", "fish", "--n", "0"], f"{N_RANGE}, not 0"),
    (["-p", "fish", "--n", "-5"], f"{N_RANGE}, not -5"),
    (["-p", "fish", "--n", "100000000"], f"{N_RANGE}, not 100000000"),
    (["-p", "fish", "--steps", "-3"], "steps must be"),
    (["-p", "fish", "--steps", "99999999"], "steps must be"),
    (["-p", "fish", "--guidance-scale", "-1"], "clip_guidance_scale must be"),
    (["-p", "fish", "--guidance-scale", "inf"], "clip_guidance_scale must be"),
    (["-p", "fish", "--cutn", "0"], "cutn must be"),
    (["-p", "fish", "--seed", "-1"], "seed must be"),
    (["-p", "fish", "--seed", str(2 ** 63)], "seed must be"),
    (["-p", "fish", "--seed", str(2 ** 63 - 2), "--n", "5"], "seed + n - 1 must be at most"),
    (["-p", "fish", "--batch-size", "1000"], "batch_size must be"),
    (["-p", "fish", "--save-every", "0"], "save_every must be"),
    (["-p", "fish", "--method", "euler"], "method must be"),
    (["-p", "fish", "--precision", "fp16"], "fp16 autocast is not supported on the CPU"),
    (["-p", "fish", "--device", "cuda:7"], "CUDA is not available"),
    (["-p", "fish", "--clip", "nope"], "unknown CLIP model"),
    (["-p", "fish", "--init", "/no/such/file.png"], "image file not found"),
    (["-p", "fish", "--image-prompt", "12"], "image 12 doesn't exist"),
    (["-p", "fish", "--skip-steps", "2"], "needs an init image"),
    (["-p", "fish", "--checkpoint", "/no/such.pt"], "checkpoint not found"),
    (["-p", "a\x00b"], "without control characters"),
    (["-p", "fish", "--n", "many"], "'many' is not a valid integer"),
])
def test_bad_generate_input(cli, instance, args, words):
    result = cli("generate", *TINY, *args)
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and words in lines[0], result.output
    assert list(instance.iterdir()) == []  # no database, no files


def test_unreadable_init_and_unknown_preset_and_missing_weights(cli, instance):
    bad = instance.parent / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    for args, words in [
        (["--model", "tiny", "-p", "fish", "--init", str(bad)], "cannot read image"),
        (["--model", "nope", "-p", "fish"], "unknown model preset 'nope'"),
        (["--model", "uncond-256", "-p", "fish"], "256x256_diffusion_uncond.pt are not cached"),
    ]:
        result = cli("generate", *args)
        assert result.exit_code != 0 and words in result.output and len(result.output.strip().splitlines()) == 1
    assert list(instance.iterdir()) == []


def test_oversized_images_are_refused_in_one_line_naming_the_file_and_the_limit(cli, instance, tmp_path):
    from PIL import Image

    big = tmp_path / "huge.png"
    Image.new("1", (20000, 20000)).save(big)  # 400 megapixels, a few kB on disk
    for args in (["--init", str(big), "--skip-steps", "1"], ["--image-prompt", str(big)]):
        result = cli("generate", *TINY, "-p", "fish", *args)
        lines = result.output.strip().splitlines()
        assert result.exit_code == 1 and len(lines) == 1, result.output
        assert str(big) in lines[0] and "over the limit of" in lines[0]
    assert list(instance.iterdir()) == []


def test_bad_input_adds_no_job_to_an_existing_gallery(cli, store):
    assert cli("generate", *TINY, "-p", "fish", "--queue").exit_code == 0
    assert cli("generate", *TINY, "-p", "fish:x", "--queue").exit_code != 0
    assert len(store.list_jobs()) == 1


@pytest.mark.parametrize("cmd, words", [
    (["show", "999"], "image 999 doesn't exist"), (["reproduce", "999"], "image 999 doesn't exist"),
    (["show", str(2 ** 70)], f"image {2 ** 70} doesn't exist"), (["star", str(2 ** 70)], "doesn't exist"),
    (["delete", "1", str(2 ** 64)], "doesn't exist"), (["jobs", "--status", "bogus"], "status must be one of"),
    (["search", "red", "--since", "garbage"], "--since must be a date"),
    (["search", "red", "--until", "2026-13-45"], "--until must be a date"),
])
def test_bad_ids_and_values_are_one_line(cli, store, cmd, words):
    result = cli(*cmd)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and words in lines[0], result.output


def test_every_command_has_help_with_an_example():
    for name, command in main.commands.items():
        assert command.help and "Example:" in command.help, name


def test_models_lists_what_is_here_and_fetch_says_what_it_cannot_do(cli, instance):
    listed = cli("models").output
    assert "tiny" in listed and "tiny-unet.pt" in listed
    assert "uncond-256" in listed and "not downloaded (clip-curator fetch uncond-256)" in listed
    offline = cli("fetch", "uncond-256")  # the tests run offline
    lines = offline.output.strip().splitlines()
    assert offline.exit_code == 1 and len(lines) == 1 and "cannot be downloaded (offline?)" in lines[0]
    assert cli("fetch", "tiny").exit_code == 0  # bundled: nothing to do
    assert cli("fetch").exit_code == 1
