"""Weights files: find them in the cache, fetch them on request, and verify them by checksum.

``locate_*`` never touches the network: it returns a local path or raises ``WeightsMissing``
with one line naming the file, its URL and where to put it, so a web request or a job check
never blocks on a 2 GB download. ``fetch_*`` downloads what is missing (with a progress bar,
through a temp file that appears complete or not at all) and is called only by explicit steps:
the CLI's ``generate`` and ``fetch`` commands and a worker about to run a job.

Files are verified by size and sha256 where the preset knows them. Where the publisher gives
none, the checksum of the downloaded file is recorded beside it (``NAME.sha256.json``) and any
later change to the file (a same-size corruption included) is caught: the record holds the
file's size and mtime too, so the full hash is recomputed only when the file has changed.
"""
from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from gallery.errors import WeightsCorrupt, WeightsMissing
from gallery.files import atomic_write, sha256_file, write_bytes
from gallery.instance import Instance

from .presets import ClipSpec, DiffusionPreset, WeightsFile

def online(host: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to host:443 opens quickly (fails fast when offline)."""
    if os.environ.get("CLIP_CURATOR_OFFLINE") or os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _missing(what: str, filename: str, url: str, dest: Path, how: str) -> WeightsMissing:
    return WeightsMissing(f"{what} weights {filename} are not cached{how}: fetch {url} and save it as {dest}, "
                          "or pass a local file path")


def download(url: str, dest: Path, progress: bool = True) -> None:
    """Stream url to dest with a progress bar; dest appears only when complete."""
    from tqdm import tqdm

    with atomic_write(dest) as part, urllib.request.urlopen(url, timeout=30) as r, open(part, "wb") as f:
        total = int(r.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar:
            for chunk in iter(lambda: r.read(1 << 20), b""):
                f.write(chunk)
                bar.update(len(chunk))


def _record(path: Path) -> Path:
    return path.with_name(path.name + ".sha256.json")


def record_checksum(path: Path, url: str | None = None) -> None:
    """Remember a file's size, mtime and sha256, so any later change to it is caught."""
    st = path.stat()
    meta = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256_file(path), "url": url}
    write_bytes(_record(path), json.dumps(meta).encode())


def verify(path: Path, w: WeightsFile | None = None) -> None:
    """Raise WeightsCorrupt if the file differs from the preset's size/sha256 or from its recorded checksum."""
    st = path.stat()
    fix = "delete it and run again to download it afresh" if w is None or w.url else "restore it"
    if w is not None and w.size is not None and st.st_size != w.size:
        raise WeightsCorrupt(f"{path} is {st.st_size} bytes, expected {w.size}: {fix}")
    try:
        meta = json.loads(_record(path).read_text())
    except (OSError, ValueError):
        meta = None
    expected = (w.sha256 if w is not None else None) or (meta or {}).get("sha256")
    if meta is not None and st.st_size != meta.get("size"):
        raise WeightsCorrupt(f"{path} is {st.st_size} bytes but {meta.get('size')} were downloaded: {fix}")
    if expected is None or (meta is not None and meta.get("mtime_ns") == st.st_mtime_ns
                            and meta.get("sha256") == expected):
        return  # unchanged since it was last verified
    if sha256_file(path) != expected:
        raise WeightsCorrupt(f"{path} does not match its sha256 checksum: {fix}")
    if meta is not None:
        record_checksum(path, meta.get("url"))


def _locate(what: str, name: str, w: WeightsFile, instance: Instance, rebuild: str) -> Path:
    # The bundled file (``rebuild`` says how to make it again), else the verified cached download.
    if w.bundled is not None:
        if not w.bundled.is_file():
            raise WeightsMissing(f"bundled weights {w.bundled} are missing; rebuild them with {rebuild}")
        verify(w.bundled, w)
        return w.bundled
    dest = instance.models_dir / w.filename
    if not dest.is_file():
        raise _missing(what, w.filename, w.url, dest, f" (run: clip-curator fetch {name})")
    verify(dest, w)
    return dest


def locate_diffusion(preset: DiffusionPreset, instance: Instance, checkpoint: str | None = None) -> Path:
    """A verified local path to the preset's weights; WeightsMissing if they are not here."""
    if checkpoint:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise WeightsMissing(f"checkpoint not found: {path}")
        return path
    return _locate(f"diffusion model {preset.name!r}", preset.name, preset.weights, instance,
                   "python -m generate.tiny.train")


def fetch_diffusion(preset: DiffusionPreset, instance: Instance, checkpoint: str | None = None,
                    progress: bool = True) -> Path:
    """The preset's weights, downloaded into the instance's model cache first if they are not there."""
    try:
        return locate_diffusion(preset, instance, checkpoint)
    except WeightsMissing:
        if checkpoint or preset.weights.bundled is not None:
            raise
    return _download_verified(f"diffusion model {preset.name!r}", preset.weights, instance, progress)


def _download_verified(what: str, w: WeightsFile, instance: Instance, progress: bool) -> Path:
    # Into the model cache through a temp file; verified (and dropped if bad) before it is used.
    dest = instance.models_dir / w.filename
    if not online(urllib.parse.urlparse(w.url).hostname):
        raise _missing(what, w.filename, w.url, dest, " and cannot be downloaded (offline?)") from None
    try:
        download(w.url, dest, progress=progress)
    except (urllib.error.URLError, OSError) as e:
        raise WeightsMissing(f"could not download {what} weights from {w.url} ({e}): fetch it and save it "
                             f"as {dest}") from None
    try:
        verify(dest, w)
    except WeightsCorrupt:
        dest.unlink(missing_ok=True)
        raise
    record_checksum(dest, w.url)
    return dest


def _clip_source(spec: ClipSpec, instance: Instance) -> tuple[Path | None, str, str, dict]:
    """(cached path or None, URL, host, open_clip's pretrained config) of a tagged CLIP."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(spec.model, spec.pretrained)
    folder = instance.models_dir / "open_clip"
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub)
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for name in names:
            hit = try_to_load_from_cache(repo, name, cache_dir=folder)
            if isinstance(hit, str):
                return Path(hit), "", "", cfg
        return None, f"https://huggingface.co/{repo}/resolve/main/{names[-1]}", "huggingface.co", cfg
    url = cfg["url"]
    cached = folder / os.path.basename(urllib.parse.urlparse(url).path)
    return (cached if cached.is_file() else None), url, urllib.parse.urlparse(url).hostname, cfg


def locate_clip(spec: ClipSpec, instance: Instance) -> Path:
    """A local path to a CLIP model's weights; WeightsMissing if they are not here."""
    if spec.is_file:
        path = Path(spec.pretrained)
        if not path.is_file():
            raise WeightsMissing(f"CLIP weights file not found: {path}")
        return path
    cached, url, _, _ = _clip_source(spec, instance)
    if cached is None:
        raise WeightsMissing(f"CLIP weights for {spec.id} are not cached (run: clip-curator fetch --clip "
                             f"{spec.model}/{spec.pretrained}): or fetch {url} and pass it as "
                             f"--clip {spec.model}/path/to/{os.path.basename(url)}")
    return cached


def fetch_clip(spec: ClipSpec, instance: Instance, progress: bool = True) -> Path:
    """A CLIP model's weights, downloaded through open_clip into the instance's cache if needed."""
    import open_clip

    if spec.is_file:
        return locate_clip(spec, instance)
    cached, url, host, cfg = _clip_source(spec, instance)
    if cached is not None:
        return cached
    if not online(host):
        raise WeightsMissing(f"CLIP weights for {spec.id} are not cached and cannot be downloaded (offline?): "
                             f"fetch {url} and pass it as --clip {spec.model}/path/to/{os.path.basename(url)}")
    try:
        return Path(open_clip.download_pretrained(cfg, cache_dir=str(instance.models_dir / "open_clip")))
    except Exception as e:  # open_clip wraps hub and HTTP errors in several types
        raise WeightsMissing(f"could not download CLIP weights for {spec.id} from {url}: {e}") from None


def locate_backend(preset, instance: Instance, path: str | None = None) -> Path:
    """A verified local path to a backend preset's weights (or a given file); WeightsMissing if absent."""
    if path:
        given = Path(path).expanduser()
        if not given.is_file():
            raise WeightsMissing(f"weights file not found: {given}")
        return given
    return _locate(f"{preset.backend} model {preset.name!r}", preset.name, preset.weights, instance,
                   f"the training script in scripts/ for {preset.name}")


def fetch_backend(preset, instance: Instance, path: str | None = None, progress: bool = True) -> Path:
    """A backend preset's weights, downloaded into the instance's model cache first if they are not there."""
    try:
        return locate_backend(preset, instance, path)
    except WeightsMissing:
        if path or preset.weights.bundled is not None:
            raise
    return _download_verified(f"{preset.backend} model {preset.name!r}", preset.weights, instance, progress)
