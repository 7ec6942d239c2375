"""Real-ESRGAN upscaling on ncnn: quality on real photographs, tiled against whole-image output, bad input."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage import data

from generate.errors import BadRequest
from generate.upscale import (MODELS, Upscaler, _feather, choose_tile, model_files, plan_tiles,
                              upscale_file)

# One thread: the networks' per-layer OpenMP barriers slow to a crawl when another process
# (a second pytest worker, a training job) holds the other cores.
THREADS = 1


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 images, in dB."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def sharpness(a: np.ndarray) -> float:
    """Variance of the Laplacian of the grey image: high for crisp edges and texture, low for blur."""
    grey = np.asarray(Image.fromarray(a).convert("L"), np.float64)
    return float(ndimage.laplace(grey).var())


def photo_pair(name: str, short_side: int) -> tuple[Image.Image, Image.Image]:
    """A scikit-image photograph as (ground truth at 4x, the same shrunk 4x by area averaging)."""
    orig = Image.fromarray(getattr(data, name)())
    k = short_side / min(orig.size)
    w, h = round(orig.width * k), round(orig.height * k)
    truth = orig.resize((4 * w, 4 * h), Image.BOX)
    return truth, truth.resize((w, h), Image.BOX)


def check_super_resolution(up: Upscaler, name: str, short_side: int, min_gain: float) -> None:
    """Shrink a photograph 4x, upscale it back, compare with bicubic against the original."""
    truth, small = photo_pair(name, short_side)
    out = up.upscale(small)
    assert out.size == truth.size and out.mode == "RGB"
    sr, ref = np.asarray(out), np.asarray(truth)
    bicubic = np.asarray(small.resize(truth.size, Image.BICUBIC))
    # Much crisper than bicubic, yet no further from the truth than a GAN's invented detail costs.
    assert sharpness(sr) >= min_gain * sharpness(bicubic)
    assert psnr(sr, ref) >= psnr(bicubic, ref) - 3.0


@pytest.fixture(scope="module")
def compact():
    """The fast compact network, loaded once for this module."""
    up = Upscaler("compact", threads=THREADS)
    yield up
    up.close()


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea"])
def test_compact_is_sharper_than_bicubic_on_photographs(compact, name):
    check_super_resolution(compact, name, 64, min_gain=2.5)


@pytest.mark.slow
def test_x4plus_is_sharper_than_bicubic():
    with Upscaler("x4plus", threads=THREADS) as up:
        check_super_resolution(up, "astronaut", 64, min_gain=5.0)
        assert up.device in ("cpu", "vulkan")
    assert up.device == "unloaded"


@pytest.mark.slow
def test_x4plus_tiled_matches_whole_image():
    img = Image.fromarray(data.astronaut()).resize((128, 128), Image.BOX)
    whole = Upscaler("x4plus", tile=0, threads=THREADS, max_memory=8 * 1024**3)
    tiled = Upscaler("x4plus", tile=64, threads=THREADS)
    seen = []
    a = np.asarray(whole.upscale(img))
    whole.close()
    b = np.asarray(tiled.upscale(img, callback=lambda done, total: seen.append((done, total))))
    tiled.close()
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    # 50.5 dB measured: the worst case, seams crossing a small image (the 256x256 case in
    # bench/bench_upscale.py measures 55.5 dB); without overlap it is about 31 dB.
    assert psnr(a, b) >= 50.0


@pytest.mark.parametrize("tile,overlap,feather", [(32, 32, 16), (40, 8, 16), (32, 16, 0), (33, 32, 64)])
def test_compact_tiles_agree_with_whole_on_odd_sizes(compact, tile, overlap, feather):
    img = Image.fromarray(data.coffee()).resize((97, 61), Image.BOX)
    whole = np.asarray(compact.upscale(img))
    with Upscaler("compact", tile=tile, overlap=overlap, feather=feather, threads=THREADS) as tiled:
        out = np.asarray(tiled.upscale(img))
    assert out.shape == whole.shape == (244, 388, 3)
    assert psnr(out, whole) >= (50.0 if overlap >= 16 else 45.0)


def test_no_overlap_shows_seams(compact):
    # The control for the test above: without context the tiles visibly disagree with the whole.
    img = Image.fromarray(data.coffee()).resize((97, 61), Image.BOX)
    whole = np.asarray(compact.upscale(img))
    with Upscaler("compact", tile=32, overlap=0, threads=THREADS) as naive:
        assert psnr(np.asarray(naive.upscale(img)), whole) < 40.0


def test_plan_tiles_cover_the_image_once():
    tiles = plan_tiles(97, 61, 32, 10)
    cover = np.zeros((61, 97), int)
    for t in tiles:
        x0, y0, x1, y1 = t.core
        cx0, cy0, cx1, cy1 = t.context
        cover[y0:y1, x0:x1] += 1
        assert 0 <= cx0 <= x0 < x1 <= cx1 <= 97 and 0 <= cy0 <= y0 < y1 <= cy1 <= 61
        assert x1 - x0 <= 32 and y1 - y0 <= 32
        assert (x0 - cx0 == 10 or x0 == 0) and (cx1 - x1 == 10 or x1 == 97)
    assert (cover == 1).all()
    assert len(tiles) == 4 * 2
    assert plan_tiles(97, 61, 0, 10)[0].context == (0, 0, 97, 61)


def test_feather_weights_sum_to_one():
    s, length, half = 4, 97, 8
    cores = [(0, 32), (32, 65), (65, 97)]
    total = np.zeros(length * s)
    for a0, a1 in cores:
        u0, u1 = max(0, a0 - half) * s, min(length, a1 + half) * s
        total[u0:u1] += _feather(u0, u1, a0, a1, length, half, s)
    np.testing.assert_allclose(total, 1.0, atol=1e-6)


def test_choose_tile_picks_fewest_passes_that_fit():
    assert choose_tile(256, 256, 256 * 256) == 0
    tile = choose_tile(256, 256, 160 * 160, overlap=32)
    assert tile == 128
    assert max(t.pixels for t in plan_tiles(256, 256, tile, 32)) <= 160 * 160
    with pytest.raises(BadRequest, match="cannot be upscaled"):
        choose_tile(256, 256, 50 * 50, overlap=32)


def test_default_tiling_of_256_keeps_x4plus_under_2_gib():
    up = Upscaler("x4plus")
    assert up.tile_for(256, 256) == 128
    assert up.estimate_memory(256, 256) < 2 * 1024**3
    assert up.device == "unloaded"


def test_every_model_ships_in_the_wheel():
    for name, spec in MODELS.items():
        param, weights = model_files(name)
        text = param.read_text()
        assert f" {spec.input_blob}" in text and f" {spec.output_blob}" in text.splitlines()[-1]
        assert weights.stat().st_size > 1_000_000 and spec.scale == 4


def test_alpha_is_kept(compact):
    img = Image.fromarray(data.chelsea()).resize((48, 32), Image.BOX).convert("RGBA")
    alpha = np.zeros((32, 48), np.uint8)
    alpha[:, 24:] = 255
    img.putalpha(Image.fromarray(alpha))
    out = compact.upscale(img)
    assert out.mode == "RGBA" and out.size == (192, 128)
    a = np.asarray(out.getchannel("A"))
    assert a[:, :90].max() == 0 and a[:, 102:].min() == 255


def test_upscale_file_writes_png(compact, tmp_path):
    src = tmp_path / "in.jpg"
    Image.fromarray(data.coffee()).resize((60, 40), Image.BOX).save(src, quality=90)
    dest = upscale_file(src, tmp_path / "out" / "big.png", compact)
    with Image.open(dest) as out:
        assert out.format == "PNG" and out.size == (240, 160)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["big.png"]


# --- bad input: a one-line BadRequest, no model work, no file left behind ---

def _png_bytes(size=(40, 30)) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).resize(size).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("kind,message", [
    ("truncated", "truncated or corrupt"),
    ("text", "not an image"),
    ("empty", "not an image"),
    ("missing", "no such file"),
])
def test_bad_files_are_refused_without_output(tmp_path, kind, message):
    src = tmp_path / "in.png"
    if kind == "truncated":
        src.write_bytes(_png_bytes()[:600])
    elif kind == "text":
        src.write_text("a red circle on a white background\n")
    elif kind == "empty":
        src.write_bytes(b"")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    up = Upscaler("compact", threads=THREADS)
    with pytest.raises(BadRequest, match=message) as err:
        upscale_file(src, out_dir / "big.png", up)
    assert "\n" not in str(err.value) and str(src) in str(err.value)
    assert list(out_dir.iterdir()) == []
    assert up.device == "unloaded"


def test_too_large_image_is_refused_before_any_work(tmp_path):
    src = tmp_path / "in.png"
    src.write_bytes(_png_bytes((300, 200)))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    up = Upscaler("compact", threads=THREADS, max_pixels=200 * 200)
    with pytest.raises(BadRequest, match=r"300x200 \(60,000 pixels\); the upscaler accepts at most 40,000 pixels"):
        upscale_file(src, out_dir / "big.png", up)
    with pytest.raises(BadRequest, match="at most"):
        up.upscale(Image.new("RGB", (300, 200)))
    assert list(out_dir.iterdir()) == []
    assert up.device == "unloaded"


def test_memory_limit_is_checked_before_any_work():
    up = Upscaler("x4plus", tile=0)
    with pytest.raises(BadRequest, match=r"256x256 with tile 0 needs about \d+\.\d GiB, over the limit of 2\.0 GiB"):
        up.upscale(Image.new("RGB", (256, 256)))
    assert up.device == "unloaded"


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(BadRequest, match="unknown upscaler model 'x8'; choose one of x4plus, x4plus-anime, compact"):
        Upscaler("x8")
    with pytest.raises(BadRequest, match="tile must be 0"):
        Upscaler("compact", tile=8)
    with pytest.raises(BadRequest, match=r"\.png suffix"):
        upscale_file(tmp_path / "in.png", tmp_path / "out.jpg", Upscaler("compact"))
