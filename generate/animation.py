"""Animations of an image growing out of noise: MP4 (H.264) where ffmpeg is bundled, else animated WebP."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from gallery.files import atomic_write

ANIMATION_MIN_SIDE = 256
ANIMATION_FPS = 12


def animation_suffix() -> str:
    """'.mp4' where an ffmpeg binary ships with imageio-ffmpeg, else '.webp'."""
    try:
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
        return ".mp4"
    except Exception:
        return ".webp"


def _enlarge(frames: list[np.ndarray]) -> list[np.ndarray]:
    """Nearest-neighbour enlarge small frames so the animation is watchable (and even-sized for H.264)."""
    h, w = frames[0].shape[:2]
    k = max(1, -(-ANIMATION_MIN_SIDE // min(h, w)))
    if k == 1 and h % 2 == 0 and w % 2 == 0:
        return frames
    out = [np.repeat(np.repeat(f, k, axis=0), k, axis=1) for f in frames]
    return [f[: f.shape[0] // 2 * 2, : f.shape[1] // 2 * 2] for f in out]


def _write_mp4(frames: list[np.ndarray], path: Path) -> None:
    import imageio_ffmpeg

    h, w = frames[0].shape[:2]
    writer = imageio_ffmpeg.write_frames(str(path), (w, h), fps=ANIMATION_FPS, codec="libx264",
                                         pix_fmt_out="yuv420p", macro_block_size=2,
                                         output_params=["-movflags", "+faststart"])
    writer.send(None)
    for f in frames:
        writer.send(np.ascontiguousarray(f))
    writer.close()


def write_animation(frames: list[np.ndarray], dest: Path) -> None:
    """Write uint8 HxWx3 frames as an MP4 (H.264) or animated WebP/GIF, by dest's suffix, atomically."""
    if not frames:
        raise ValueError("no frames to animate")
    frames = _enlarge(frames)
    # Hold the last frame a little so the finished image can be seen.
    frames = frames + [frames[-1]] * (ANIMATION_FPS // 2)
    with atomic_write(dest) as tmp:
        if dest.suffix == ".mp4":
            _write_mp4(frames, tmp)
        else:
            imgs = [Image.fromarray(f) for f in frames]
            fmt = "GIF" if dest.suffix == ".gif" else "WEBP"
            imgs[0].save(tmp, format=fmt, save_all=True, append_images=imgs[1:],
                         duration=int(1000 / ANIMATION_FPS), loop=0)
