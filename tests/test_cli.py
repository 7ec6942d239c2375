"""Bad input: one clear line, a non-zero exit, and nothing written."""
import pytest

from cli import main

TINY = ["--model", "tiny", "--steps", "4"]


@pytest.mark.parametrize("args, words", [
    (["-p", ""], "prompt is empty"),
    (["-p", "   "], "prompt is empty"),
    (["-p", "fish:abc"], "malformed weight"),
    (["-p", "fish:1|boat:-1"], "add up to zero"),
    (["-p", "fish", "--n", "0"], "--n must be from 1"),
    (["-p", "fish", "--n", "-5"], "--n must be from 1"),
    (["-p", "fish", "--n", "100000000"], "--n must be from 1"),
    (["-p", "fish", "--steps", "-3"], "steps must be"),
    (["-p", "fish", "--steps", "99999999"], "steps must be"),
    (["-p", "fish", "--guidance-scale", "-1"], "clip_guidance_scale must be"),
    (["-p", "fish", "--guidance-scale", "inf"], "clip_guidance_scale must be"),
    (["-p", "fish", "--cutn", "0"], "cutn must be"),
    (["-p", "fish", "--seed", "-1"], "seed must be"),
    (["-p", "fish", "--batch-size", "1000"], "batch_size must be"),
    (["-p", "fish", "--save-every", "0"], "--save-every must be"),
    (["-p", "fish", "--method", "euler"], "method must be"),
    (["-p", "fish", "--precision", "fp16"], "fp16 autocast is not supported on the CPU"),
    (["-p", "fish", "--device", "cuda:7"], "CUDA is not available"),
    (["-p", "fish", "--clip", "nope"], "unknown CLIP model"),
    (["-p", "fish", "--init", "/no/such/file.png"], "image file not found"),
    (["-p", "fish", "--image-prompt", "12"], "image 12 doesn't exist"),
    (["-p", "fish", "--skip-steps", "2"], "needs an init image"),
    (["-p", "fish", "--checkpoint", "/no/such.pt"], "checkpoint not found"),
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


def test_bad_input_adds_no_job_to_an_existing_gallery(cli, store):
    assert cli("generate", *TINY, "-p", "fish", "--queue").exit_code == 0
    assert cli("generate", *TINY, "-p", "fish:x", "--queue").exit_code != 0
    assert len(store.list_jobs()) == 1


def test_missing_ids(cli, store):
    for cmd in (["show", "999"], ["reproduce", "999"]):
        result = cli(*cmd)
        assert result.exit_code != 0 and "image 999 doesn't exist" in result.output


def test_every_command_has_help_with_an_example():
    for name, command in main.commands.items():
        assert command.help and "Example:" in command.help, name
