"""Real-ESRGAN upscaling on ncnn: quality on real photographs, tiled against whole-image output, bad input."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage import data

from gallery.errors import BadRequest
from generate.upscale import (MODELS, Layout, Plan, Planner, Split, Upscaler, choose_grid, feather, find_split,
                              graph_reach, has_avx512, model_files, plan_grid, plan_tiles, read_graph,
                              upscale_file)
from generate.upscale.stitch import crop, stitch_passes, write_tail

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
@pytest.mark.parametrize("split", [True, False])
def test_x4plus_tiled_matches_whole_image(split):
    # Tiles cut through the body (split) or through the whole network (no split), 64px + 32 context.
    img = Image.fromarray(data.astronaut()).resize((128, 128), Image.BOX)
    whole = Upscaler("x4plus", tile=0, threads=THREADS, max_memory=8 * 1024**3)
    tiled = Upscaler("x4plus", tile=64, threads=THREADS, split=split)
    seen = []
    a = np.asarray(whole.upscale(img))
    whole.close()
    b = np.asarray(tiled.upscale(img, callback=lambda done, total: seen.append((done, total))))
    tiled.close()
    # With the split, four body passes then one tail pass (the 128x128 feature map fits at once).
    n = 5 if split else 4
    assert seen == [(i, n) for i in range(1, n + 1)]
    # 50.5 dB measured without the split: the worst case, seams crossing a small image (the
    # 256x256 case in bench/bench_upscale.py measures 55.5 dB); without overlap it is about 31 dB.
    assert psnr(a, b) >= 50.0


@pytest.mark.slow
def test_tail_tiles_reproduce_the_whole_image():
    # The default for a 256 input: one body pass, the upsampling tail in tiles with a 2-pixel halo.
    # The halo covers the tail's whole reach, so the result is the whole-image result (to rounding).
    img = Image.fromarray(data.chelsea()).resize((96, 72), Image.BOX)
    with Upscaler("x4plus-anime", tile=0, threads=THREADS) as whole:
        a = np.asarray(whole.upscale(img)).astype(int)
    # A memory limit that leaves room for the body over the whole image but not the tail.
    weights = Upscaler("x4plus-anime", threads=THREADS).planner.fixed_bytes(0, 0)
    tight = Upscaler("x4plus-anime", threads=THREADS, max_memory=weights + 160 * 1024**2)
    plan = tight.plan(96, 72)
    assert len(plan.passes) == 1 and len(plan.tail) > 1 and plan.split.halo == 2 and not plan.cofit
    with tight:
        b = np.asarray(tight.upscale(img)).astype(int)
        # Body and tail do not fit together: only the last stage's buffers are kept.
        assert tight.kept_pools == 1
    diff = np.abs(a - b)
    assert diff.max() <= 1 and (diff == 0).mean() > 0.999
    # The control: the same tail tiles with no halo leave seams.
    no_halo = Upscaler("x4plus-anime", threads=THREADS, max_memory=tight.planner.max_memory,
                       layout=replace(tight.planner.layout, split=Split(plan.split.blob, plan.split.channels, 0)))
    with no_halo:
        c = np.asarray(no_halo.upscale(img)).astype(int)
    assert np.abs(a - c).max() > 10


@pytest.mark.slow
def test_body_and_tail_keep_their_buffers_where_they_fit_together():
    img = Image.fromarray(data.chelsea()).resize((96, 72), Image.BOX)
    with Upscaler("x4plus-anime", tile=0, threads=THREADS) as whole:
        a = np.asarray(whole.upscale(img)).astype(int)
    room = 230 * 1024**2  # beside the weights: enough for body and tail together at this size
    up = Upscaler("x4plus-anime", threads=THREADS)
    # At this small size the process's own allowance would dwarf the work: leave it out.
    up.planner = replace(up.planner, max_memory=up.planner.fixed_bytes(0, 0) + room, process_bytes=0)
    plan = up.plan(96, 72)
    assert plan.cofit and len(plan.passes) == 1 and len(plan.tail) > 1
    with up:
        for _ in range(2):
            b = np.asarray(up.upscale(img)).astype(int)
            assert up.kept_pools == 2  # both stages' pools survive the image
            diff = np.abs(a - b)
            assert diff.max() <= 1 and (diff == 0).mean() > 0.999
    assert up.kept_pools == 0  # closing empties them


def split_of(param_text: str) -> Split | None:
    return find_split(read_graph(param_text))


def test_find_split_cuts_rrdbnet_before_its_upsampling_tail():
    x4plus = split_of(model_files("x4plus")[0].read_text())
    assert x4plus is not None and x4plus.channels == 64
    # 3x3 conv after one 2x upsample (1/2 pixel) and three after two (3/4): a reach of 1.25 pixels.
    assert x4plus.halo == 2
    assert split_of(model_files("x4plus-anime")[0].read_text()).halo == 2
    # SRVGGNet's last layer adds the upsampled input: no tail to cut.
    assert split_of(model_files("compact")[0].read_text()) is None


def _graph(*layers: str) -> str:
    return "7767517\n{} {}\nInput in 0 1 data\n".format(len(layers) + 1, 0) + "\n".join(layers) + "\n"


def test_find_split_reads_reach_and_refuses_what_it_does_not_know():
    body = "BinaryOp add 2 1 a b feat"
    up2 = "Interp up 1 1 feat u 0=1 1=2.0 2=2.0"
    conv = "Convolution c 1 1 u output 0=3 1=5 6=4800"  # 5x5 over 64 channels: 2 px at 2x
    assert split_of(_graph(body, up2, conv)) == Split("feat", 64, 1)
    dilated = "Convolution c 1 1 u output 0=3 1=3 2=4 6=1728"  # radius 4 at 2x
    assert split_of(_graph(body, up2, dilated)) == Split("feat", 64, 2)
    bilinear = "Interp up 1 1 feat u 0=2 1=2.0 2=2.0"
    assert split_of(_graph(body, bilinear, conv)).halo == 2
    assert split_of(_graph(body, up2, "Convolution c 1 1 u output 0=3 1=3 3=2 6=576")) is None  # stride 2
    assert split_of(_graph(body, up2, "Pooling p 1 1 u output")) is None  # unknown layer
    assert split_of(_graph(body, "Convolution c 1 1 feat output 0=3 1=3 6=576")) is None  # no upsampling


def test_graph_reach_counts_what_each_output_pixel_can_see():
    # SRVGGNet: 18 3x3 convolutions at input resolution, then pixel shuffle: 18 pixels.
    assert graph_reach(read_graph(model_files("compact")[0].read_text()), "data", "output") == 18
    # RRDBNet (anime: 6 blocks of 3 dense blocks of 5 convs), plus conv_first, conv_body and the tail.
    anime = read_graph(model_files("x4plus-anime")[0].read_text())
    assert graph_reach(anime, "data", "output") == math.ceil(6 * 3 * 5 + 2 + 1.25)
    assert graph_reach(anime, "data", "501") == 6 * 3 * 5 + 2
    up = "PixelShuffle ps 1 1 x y 0=4"
    conv = "Convolution c 1 1 y output 0=3 1=9 6=3888"  # radius 4 after 4x: one input pixel
    assert graph_reach(read_graph(_graph("Convolution a 1 1 data x 0=48 1=3 6=1296", up, conv)),
                       "data", "output") == 2
    assert graph_reach(read_graph(_graph("Pooling p 1 1 data output")), "data", "output") is None


@pytest.mark.parametrize("tile,overlap,feather", [(32, 32, 16), (40, 8, 16), (32, 16, 0), (33, 32, 64)])
def test_compact_tiles_agree_with_whole_on_odd_sizes(compact, tile, overlap, feather):
    img = Image.fromarray(data.coffee()).resize((97, 61), Image.BOX)
    whole = np.asarray(compact.upscale(img))
    with Upscaler("compact", tile=tile, overlap=overlap, feather=feather, threads=THREADS) as tiled:
        out = np.asarray(tiled.upscale(img))
        # No more context is read than the network can see (its reach, 18 pixels).
        assert tiled.context == min(overlap, 18)
    assert out.shape == whole.shape == (244, 388, 3)
    assert psnr(out, whole) >= (50.0 if overlap >= 16 else 45.0)
    if overlap >= 18:
        # Context covering the whole reach, so no cross-fade: the same pixels but for float
        # rounding (the convolutions' Winograd blocks fall differently in each tile).
        diff = np.abs(out.astype(int) - whole)
        assert diff.max() <= 1 and (diff == 0).mean() > 0.999


def test_pools_are_emptied_between_shapes_without_changing_output(compact):
    # Passes of changing shapes (edge and inner tiles, then a whole image), and an explicit trim,
    # reuse or empty ncnn's pools; the pixels must not depend on which happened.
    img = Image.fromarray(data.coffee()).resize((97, 61), Image.BOX)
    with Upscaler("compact", tile=40, overlap=8, threads=THREADS) as tiled:
        first = np.asarray(tiled.upscale(img))
        assert tiled.kept_pools > 0
        tiled.trim()
        assert tiled.kept_pools == 0 and tiled.device == "cpu"
        again = np.asarray(tiled.upscale(img))
    np.testing.assert_array_equal(first, again)
    whole = np.asarray(compact.upscale(img))
    compact.trim()
    np.testing.assert_array_equal(np.asarray(compact.upscale(img)), whole)


def test_winograd63_gives_ncnns_pixels_with_other_kernels(compact):
    # F(6x6, 3x3) Winograd in place of ncnn's own choice: different arithmetic (the float outputs
    # differ in the last bits), the same image (at most 1 level apart after rounding).
    img = Image.fromarray(data.coffee()).resize((96, 64), Image.BOX)
    with Upscaler("compact", threads=THREADS, winograd63=False, use_gpu=False) as plain, \
            Upscaler("compact", threads=THREADS, winograd63=True, use_gpu=False) as f63:
        a, b = np.asarray(plain.upscale(img)), np.asarray(f63.upscale(img))
        assert f63.uses_winograd63 and not plain.uses_winograd63
        convs = [layer for layer in f63.net.layers() if layer.type == "Convolution"]
        assert convs and all(layer.top_shapes and layer.top_shapes[0].w > 0 for layer in convs)
        x = np.ascontiguousarray(np.asarray(img).transpose(2, 0, 1), np.float32) / 255
        ya = plain.forward("data", "output", x)
        yb = f63.forward("data", "output", x)
    assert not np.array_equal(ya, yb)
    assert np.abs(ya - yb).max() < 1e-3
    assert np.abs(a.astype(int) - b).max() <= 1
    assert psnr(a, b) >= 60
    # By default it is used on CPUs with AVX-512 only.
    compact.load()
    assert compact.uses_winograd63 == (compact.device == "cpu" and has_avx512())


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
        total[u0:u1] += feather(u0, u1, a0, a1, length, half, s)
    np.testing.assert_allclose(total, 1.0, atol=1e-6)


@pytest.mark.parametrize("overlap,exact", [(8, False), (0, False), (18, True)])
def test_stitched_passes_of_a_local_network_give_its_whole_output(overlap, exact):
    # A stand-in network that enlarges each pixel 2x: any seam or misplaced weight would show.
    s, (H, W) = 2, (61, 97)
    img = np.random.default_rng(0).random((H, W, 3), np.float32) * 255
    planner = Planner(MODELS["compact"], lambda: Layout(None, overlap, exact), overlap=overlap)

    def run(t):
        return np.repeat(np.repeat(crop(img, t.context), s, axis=0), s, axis=1)

    plan = Plan(plan_tiles(W, H, 32, overlap), exact=exact)
    half = planner.half_feather(plan)
    assert half == (0 if exact else min(8, overlap))
    got, ends, ticks = np.zeros((H * s, W * s, 3), np.float32), [0], []

    def emit(r0, r1, rows):
        assert r0 == ends[-1]  # finished rows come in order, each once
        got[r0:r1] = rows
        ends.append(r1)

    stitch_passes(plan, H, W, s, 3, half, run, emit, lambda: ticks.append(1))
    assert ends[-1] == H * s and len(ticks) == len(plan.passes)
    np.testing.assert_allclose(got, run(plan_tiles(W, H, 0)[0]), atol=1e-3)
    # The tail writes exact cores, rounded, straight into the output.
    out = np.zeros((H * s, W * s, 3), np.uint8)
    write_tail(Plan(plan.passes, tail=plan_tiles(W, H, 40, 2)), out, s, run, lambda: ticks.append(1))
    np.testing.assert_array_equal(out, np.floor(run(plan_tiles(W, H, 0)[0]) + 0.5).astype(np.uint8))


def test_choose_grid_reads_the_fewest_pixels_that_fit():
    assert choose_grid(256, 256, 32, lambda px, rows: px <= 256 * 256) == (1, 1)
    # Where a half-height strip fits, two strips (one seam) beat 2x2 tiles (two seams).
    assert choose_grid(256, 256, 32, lambda px, rows: px <= 256 * 160) == (1, 2)
    # Where only a quarter fits, 2x2 tiles of 160x160 beat eight thin strips.
    cols, rows = choose_grid(256, 256, 32, lambda px, rows: px <= 160 * 160)
    assert (cols, rows) == (2, 2)
    assert max(t.pixels for t in plan_grid(256, 256, cols, rows, 32)) <= 160 * 160
    # The band the rows are blended into counts too: a limit on rows forces more of them.
    assert choose_grid(256, 256, 32, lambda px, rows: rows <= 64)[1] == 4
    with pytest.raises(BadRequest, match="cannot be upscaled"):
        choose_grid(256, 256, 32, lambda px, rows: px <= 50 * 50)


@pytest.mark.parametrize("f63", [False, True])
def test_default_plan_of_256_keeps_x4plus_under_2_gib(f63):
    up = Upscaler("x4plus", winograd63=f63)
    plan = up.plan(256, 256)
    # The body runs over the whole image; only the memory-hungry tail is cut.
    assert len(plan.passes) == 1 and plan.tail
    assert up.estimate_memory(256, 256) < 2 * 1024**3  # the bench measures 1.7 GB at peak
    if not f63:
        # Into tiles small enough for both stages to keep their buffers between images...
        assert plan.cofit and plan.describe() == "body 1 pass, tail 9 x 86x86 +2"
    else:
        # ...which F(6x6) Winograd's larger weights leave no room for: then the tail is cut for
        # its own sake, into fewer, larger passes.
        assert not plan.cofit and plan.describe() == "body 1 pass, tail 2 x 256x128 +2"
    # Where they would not fit together, the tail is cut for its own sake.
    tight = Upscaler("x4plus", winograd63=False, max_memory=int(1.8 * 1024**3)).plan(256, 256)
    assert not tight.cofit and len(tight.tail) < 9
    # With room for everything it is one pass; with no split, four passes through the whole network.
    assert Upscaler("x4plus", max_memory=8 * 1024**3).plan(256, 256).describe() == "whole image"
    assert Upscaler("x4plus", split=False).plan(256, 256).describe() == "4 x 128x128 +32"
    assert up.device == "unloaded"


def test_large_images_tile_the_body_too():
    up = Upscaler("x4plus")
    plan = up.plan(1024, 1024)
    assert plan.split is not None and len(plan.passes) > 1 and len(plan.tail) > 1
    assert up.estimate_memory(1024, 1024) <= 2 * 1024**3
    # The compact network has no tail to cut; it tiles the whole network when it must.
    small = Upscaler("compact")
    assert small.plan(1024, 1024).split is None and small.plan(256, 256).describe() == "whole image"
    assert small.estimate_memory(2048, 2048) <= 2 * 1024**3


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
    with pytest.raises(BadRequest, match=r"256x256 \(whole image\) needs about \d+\.\d GiB, over the limit of 2\.0 GiB"):
        up.upscale(Image.new("RGB", (256, 256)))
    assert up.device == "unloaded"


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(BadRequest, match="unknown upscaler model 'x8'; choose one of x4plus, x4plus-anime, compact"):
        Upscaler("x8")
    with pytest.raises(BadRequest, match="tile must be 0"):
        Upscaler("compact", tile=8)
    with pytest.raises(BadRequest, match=r"\.png suffix"):
        upscale_file(tmp_path / "in.png", tmp_path / "out.jpg", Upscaler("compact"))
