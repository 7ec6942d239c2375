"""Atomic file writes: images and animations appear complete under their final name, or not at all."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
from PIL import Image

ANIMATION_MIN_SIDE = 256
ANIMATION_FPS = 12


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _tmp_name(dest: Path) -> Path:
    # Keep the real suffix last so writers that pick a format from it still work.
    return dest.with_name(f".{dest.stem}.tmp{os.getpid()}{dest.suffix}")


def commit_file(tmp: Path, dest: Path) -> None:
    """fsync a finished temp file and rename it over dest."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, dest)
    _fsync_dir(dest.parent)


def write_png(image: Image.Image, dest: Path, pnginfo=None) -> None:
    """Write a PNG atomically (temp file, fsync, rename)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(dest)
    try:
        image.save(tmp, format="PNG", pnginfo=pnginfo)
        commit_file(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


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


def write_animation(frames: list[np.ndarray], dest: Path) -> None:
    """Write uint8 HxWx3 frames as an MP4 (H.264) or animated WebP, atomically."""
    if not frames:
        raise ValueError("no frames to animate")
    frames = _enlarge(frames)
    # Hold the last frame a little so the finished image can be seen.
    frames = frames + [frames[-1]] * (ANIMATION_FPS // 2)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(dest)
    try:
        if dest.suffix == ".mp4":
            import imageio_ffmpeg

            h, w = frames[0].shape[:2]
            writer = imageio_ffmpeg.write_frames(str(tmp), (w, h), fps=ANIMATION_FPS, codec="libx264",
                                                 pix_fmt_out="yuv420p", macro_block_size=2,
                                                 output_params=["-movflags", "+faststart"])
            writer.send(None)
            for f in frames:
                writer.send(np.ascontiguousarray(f))
            writer.close()
        else:
            imgs = [Image.fromarray(f) for f in frames]
            fmt = "GIF" if dest.suffix == ".gif" else "WEBP"
            imgs[0].save(tmp, format=fmt, save_all=True, append_images=imgs[1:],
                         duration=int(1000 / ANIMATION_FPS), loop=0)
        commit_file(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def is_temp(path: Path) -> bool:
    """Whether a file is a leftover temp file of an interrupted write."""
    return path.name.startswith(".") and ".tmp" in path.name
