"""Nearest-neighbour search over unit-norm CLIP embeddings: an exact scan, or hnswlib when large.

Below ``exact_below`` vectors an exact numpy scan is used: at 20k x 512 it answers in about a
millisecond with perfect recall and needs no build, no file and no staleness checks. Above it an
hnswlib HNSW graph (Malkov & Yashunin 2018) answers in well under a millisecond at 1M vectors.

The hnswlib file is a derived cache of the database, and hnswlib trusts a file blindly: one link id
out of range makes a search read wild memory and kill the process. So a file is used only once the
SHA-256 in the header written after it matches and a child process has checked and queried its graph.
"""
from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import threading
from collections import namedtuple
from pathlib import Path

import numpy as np

from gallery.errors import IndexUnusable
from gallery.files import atomic_write, sha256_file, write_bytes

EXACT_BELOW = 20_000
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 200
HNSW_EF_SEARCH = 128
REPAIR = "run `clip-curator index`"


def exact_search(vectors: np.ndarray, ids: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (ids, cosine scores) of unit-norm vectors against one unit-norm query."""
    if len(ids) == 0 or k <= 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    scores = vectors @ query.astype(np.float32)
    k = min(k, len(ids))
    top = np.argpartition(-scores, k - 1)[:k]
    top = top[np.argsort(-scores[top], kind="stable")]
    return ids[top], scores[top]


def probe_child():
    """Child-process entry: exit 0 if an hnswlib file's links all stay in its graph and it finds its own vectors."""
    import struct
    import sys

    import numpy as np

    path, dim = sys.argv[1], int(sys.argv[2])
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    _, cap, n, per, label_at, data_at, top, entry, max_m, max_m0 = struct.unpack_from(
        "<6QiI2Q", raw[:96].tobytes().ljust(96, b"\0"))
    if not (0 < n <= cap < 1 << 32 and data_at == 4 + 4 * max_m0 and label_at == data_at + 4 * dim
            and per == label_at + 8 and 0 <= top < 64 and entry < n and max(max_m, max_m0) < 1 << 16
            and len(raw) >= 96 + n * per):
        sys.exit("its hnswlib header is inconsistent, or it is truncated")
    level0 = raw[96:96 + n * per].view(np.uint32).reshape(n, per // 4)

    def bad(rows, m, level):
        """Whether link lists (a count, then m ids) have links leaving the graph, or elements below ``level``."""
        counts = rows[:, 0] & 0xFFFF
        used = np.arange(m) < counts[:, None]
        links = np.where(used, rows[:, 1:1 + m], 0)
        return len(rows) and (counts.max() > m or links.max() >= n or np.any(level) and (
            used & (levels[links] < level)).any())
    # Upper-level link lists are variable-length records after level 0: one sequential pass finds them.
    tail, pos, step = raw[96 + n * per:].tobytes(), 0, 4 + 4 * max_m
    levels, blocks, depth = np.zeros(n, dtype=np.int64), [], []
    for i in range(n):
        size = int.from_bytes(tail[pos:pos + 4], "little")
        if size % step or size // step > top or pos + 4 + size > len(tail):
            sys.exit("an upper-level link list is truncated or has a bad size")
        levels[i] = size // step
        blocks += range(pos + 4, pos + 4 + size, step)
        depth += range(1, size // step + 1)
        pos += 4 + size
    rows = np.frombuffer(tail, dtype=np.uint32, count=pos // 4)[
        np.asarray(blocks, dtype=np.int64)[:, None] // 4 + np.arange(max_m + 1)]
    if levels[entry] != top or bad(level0, max_m0, 0) or bad(rows, max_m, np.asarray(depth, dtype=np.int64)[:, None]):
        sys.exit("a link of its graph points outside it, or to an element not on that level")
    import hnswlib
    index = hnswlib.Index(space="ip", dim=dim)
    index.load_index(path, allow_replace_deleted=True)
    live = np.flatnonzero((level0[:, 0] >> 16 & 1) == 0)
    if len(live):
        index.set_ef(128)
        pick = live[np.linspace(0, len(live) - 1, 16).astype(np.int64)]
        _, dist = index.knn_query(level0[pick, data_at // 4:label_at // 4].copy().view(np.float32), k=1)
        # A stored vector's nearest neighbour is itself (or an identical copy) at distance ~0.
        if (~(dist[:, 0] <= 1e-3)).mean() > 0.25:
            sys.exit("it does not find its own vectors")


def probe_file(path: Path, dim: int) -> str | None:
    """Why an index file fails a test in a separate process (where a crash harms nothing), or None if it passes."""
    # The child runs only probe_child: it imports numpy and hnswlib, not torch, nor modules from the working folder.
    code = f"import sys\nsys.path[:] = [p for p in sys.path if p]\n{inspect.getsource(probe_child)}\nprobe_child()"
    try:
        done = subprocess.run([sys.executable, "-c", code, str(path), str(dim)], stdin=subprocess.DEVNULL,
                              capture_output=True, check=False, timeout=60 + path.stat().st_size / 20e6)
    except (subprocess.TimeoutExpired, OSError) as e:
        return f"it could not be tested ({getattr(e, 'strerror', None) or type(e).__name__})"
    if done.returncode < 0:
        return f"a test of it in a separate process died of signal {-done.returncode}"
    lines = done.stderr.decode(errors="replace").strip().splitlines() or [f"exit status {done.returncode}"]
    return f"a test of it failed: {lines[-1]}" if done.returncode else None


class Untrusted(Exception):
    """A saved index file that must not be used; the message says why."""


# What a saved index claims to hold, and the SHA-256 of the file it vouches for.
IndexHeader = namedtuple("IndexHeader", "model dim count last_id max_elements checksum ids_sum deleted")


class HnswIndex:
    """An hnswlib inner-product index over unit vectors, keyed by image id."""

    def __init__(self, dim: int, max_elements: int = 1024):
        import hnswlib
        self.dim = dim
        self.index = hnswlib.Index(space="ip", dim=dim)
        self.index.init_index(max_elements=max(max_elements, 16), ef_construction=HNSW_EF_CONSTRUCTION, M=HNSW_M,
                              allow_replace_deleted=True)
        self.index.set_ef(HNSW_EF_SEARCH)
        self.live: set[int] = set()
        self.deleted: set[int] = set()

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add (or update) vectors; grows the index as needed."""
        if len(ids) == 0:
            return
        need, cap = self.index.get_current_count() + len(ids), self.index.get_max_elements()
        if need > cap:
            self.index.resize_index(max(need, cap * 2))
        self.index.add_items(vectors.astype(np.float32), ids.astype(np.int64), replace_deleted=True)
        self.live.update(int(i) for i in ids)
        self.deleted.difference_update(int(i) for i in ids)

    def remove(self, ids) -> None:
        """Mark ids deleted so they are never returned."""
        for i in set(map(int, ids)) & self.live:
            self.index.mark_deleted(i)
            self.live.discard(i)
            self.deleted.add(i)

    def search(self, query: np.ndarray, k: int, allowed=None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (ids, cosine scores), among ``allowed`` ids only if given (RuntimeError if too few are found)."""
        allow = None if allowed is None else self.live.intersection(int(i) for i in allowed)
        k = min(k, len(self.live if allow is None else allow))
        if k <= 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        self.index.set_ef(max(HNSW_EF_SEARCH, k))
        labels, dist = self.index.knn_query(query.astype(np.float32)[None], k=k, num_threads=1,
                                            filter=None if allow is None else allow.__contains__)
        return labels[0].astype(np.int64), (1.0 - dist[0]).astype(np.float32)

    def save(self, path: Path, model: str, last_id: int) -> str:
        """Write the index, then its header vouching for it, atomically; returns the file's checksum."""
        with atomic_write(path) as tmp:
            self.index.save_index(str(tmp))
            checksum = sha256_file(tmp)
        header = IndexHeader(model, self.dim, len(self.live), last_id, self.index.get_max_elements(), checksum,
                             int(sum(self.live)), sorted(self.deleted))
        write_bytes(path.with_suffix(".json"), json.dumps(header._asdict()).encode())
        return checksum

    @classmethod
    def load(cls, path: Path, header: IndexHeader) -> HnswIndex:
        """Load a file that passed its checks; Untrusted if it disagrees with its header."""
        import hnswlib
        self = cls.__new__(cls)
        self.dim, self.index = header.dim, hnswlib.Index(space="ip", dim=header.dim)
        try:  # at the capacity in the file, as the child process loaded it
            self.index.load_index(str(path), allow_replace_deleted=True)
            # hnswlib still lists labels marked deleted; the header remembers which they are.
            self.deleted = {int(i) for i in header.deleted}
        except (RuntimeError, ValueError, TypeError, MemoryError) as e:
            raise Untrusted(f"it cannot be loaded as its header describes it ({e})") from None
        self.index.set_ef(HNSW_EF_SEARCH)
        self.live = set(self.index.get_ids_list()) - self.deleted
        if len(self.live) != header.count or sum(self.live) != header.ids_sum:
            raise Untrusted("it holds other ids than its header says")
        return self


def _stat_key(path: Path):
    try:
        return (s := os.stat(path)).st_mode, s.st_ino, s.st_size, s.st_mtime_ns
    except OSError:
        return None


def _joined(parts) -> tuple[np.ndarray, np.ndarray]:
    ids, mats = zip(*parts) if parts else ([np.empty(0, dtype=np.int64)], [np.empty((0, 0), dtype=np.float32)])
    return np.concatenate(ids), np.concatenate(mats)


class GalleryIndex:
    """The vectors of one CLIP model in the store, searchable, kept in step with the database. Thread-safe.

    Small galleries are scanned exactly; large ones use an hnswlib file under ``folder``, topped up, pruned or
    rebuilt when it disagrees with the database. While it cannot be trusted or written, searches are exact and
    ``note`` says why; ``sync``/``repair`` rebuild it, or with ``background_repair`` (for the site) a thread.
    """

    def __init__(self, store, model: str, folder: Path, exact_below: int = EXACT_BELOW, background_repair=False):
        self.store, self.model, self.folder = store, model, Path(folder)
        self.exact_below, self.background_repair = exact_below, background_repair
        self._lock = threading.RLock()
        self._stats = self._exact = self._hnsw = self._worker = None
        self._vouched = None  # checksum of a file this instance wrote or tested: not tested again
        self._seen = None  # the files' stats when they could not be used: tried again once they change
        self.rebuilt = False  # whether the last sync had to rebuild from scratch
        self.damaged: str | None = None  # why the saved file is not in use, while searches are exact
        self.note: str | None = None  # one line for the user while searches are exact
        self.status = "not synced yet"  # one line on what the last sync did

    @property
    def path(self) -> Path:
        """The hnswlib file of this model."""
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in self.model)
        return self.folder / f"{safe}.hnsw"

    @property
    def kind(self) -> str:
        """'exact' or 'hnsw', whichever serves the current size."""
        return "exact" if self._small(self.store.embedding_stats(self.model)[0]) else "hnsw"

    def _small(self, count: int) -> bool:
        return count < self.exact_below or count == 0

    def sync(self, force_rebuild: bool = False, progress=None) -> None:
        """Bring the index in step with the database now, rebuilding an untrusted file; IndexUnusable if it can't."""
        self.wait()
        with self._lock:
            stats = self.store.embedding_stats(self.model)
            if stats != self._stats or force_rebuild or self.note is not None:
                self._update(stats, force_rebuild, progress, strict=True)

    def repair(self, progress=None) -> str:
        """Test the saved file afresh, rebuild it if untrusted, and return the status (IndexUnusable if it can't)."""
        self._hnsw = self._stats = None
        self.sync(progress=progress)
        return self.status

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a background rebuild to end; True when none is running."""
        if (worker := self._worker) is not None:
            worker.join(timeout)
        return worker is None or not worker.is_alive()

    def search(self, query: np.ndarray, k: int, allowed: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (ids, scores) for a unit query, among ``allowed`` ids only if given; never fails over the file."""
        with self._lock:
            self._refresh()
            if allowed is not None and (len(allowed) <= self.exact_below or self._hnsw is None):
                return self._scan_db(query, k, allowed)  # few candidates, or no graph: scan exactly those
            if self._hnsw is None:
                return exact_search(self._exact[1], self._exact[0], query, k)
            try:
                return self._hnsw.search(query, k, allowed)
            except RuntimeError:  # hnswlib found fewer than k (a sparse filter, many deletions): scan exactly
                return self._scan_db(query, k, allowed)

    def _refresh(self) -> None:
        stats = self.store.embedding_stats(self.model)
        # While a rebuild runs, or the files found unusable are unchanged, only the exact scan follows the database.
        waiting = self._worker is not None or (self.note is not None and self._files_seen() == self._seen)
        if waiting and not self._small(stats[0]):
            if stats != self._stats:
                self._load_exact(stats)
        elif stats != self._stats or self.note is not None:
            self._update(stats, False, None, strict=False)

    def _update(self, stats, force_rebuild: bool, progress, strict: bool) -> None:
        """Serve ``stats``: exactly if small, else from the index in memory or on disk brought in step, or a new one."""
        self.rebuilt, why = False, self.damaged if force_rebuild else None
        if self._small(stats[0]):
            self._hnsw = self.damaged = self.note = None
            self._load_exact(stats)
            self.status = f"exact scan of {stats[0]} vectors"
            return
        try:
            self._check_folder()
            index = None if force_rebuild else self._hnsw
            if index is None and not force_rebuild and self.path.exists():
                try:
                    index = self._open_saved()
                except Untrusted as e:
                    why = str(e)
            if index is None and not strict and (why or self.background_repair):
                return self._fall_back(stats, why, repairable=True)
            built = index is None
            index = HnswIndex(self._dim(), max(stats[0], 1024)) if built else index
            if self._reconcile(index, stats, progress):
                self._vouched = index.save(self.path, self.model, stats[1])
        except (IndexUnusable, OSError) as e:
            self._stats = None
            err = e if isinstance(e, IndexUnusable) else IndexUnusable(
                f"the search index {self.path} cannot be read or written ({e.strerror or e}): fix it, then {REPAIR}")
            if strict:
                raise err from None
            return self._fall_back(stats, str(err), repairable=False)
        with self._lock:
            self._hnsw, self._exact, self._stats = index, None, stats
            self.rebuilt, self.damaged, self.note = built, None, None
            self.status = f"{'rebuilt' if built else 'checked'} {self.path} ({stats[0]} vectors)" + (
                f"; the saved one was not used: {why}" if why else "")

    def _open_saved(self) -> HnswIndex:
        try:
            header = IndexHeader(**json.loads(self.path.with_suffix(".json").read_text()))
        except (OSError, ValueError, TypeError):
            raise Untrusted("its header is missing or unreadable") from None
        if header.model != self.model or header.dim != self._dim():
            raise Untrusted(f"its header is for {header.model} ({header.dim}-d)")
        if sha256_file(self.path) != header.checksum:
            raise Untrusted("its checksum does not match its header")
        if header.checksum != self._vouched and (why := probe_file(self.path, header.dim)):
            raise Untrusted(why)
        self._vouched = header.checksum
        return HnswIndex.load(self.path, header)

    def _check_folder(self) -> None:
        """IndexUnusable, naming the path and what to do, if the index file cannot be kept where it must be."""
        folder, path = self.folder, self.path
        if folder.exists() and not folder.is_dir():
            raise IndexUnusable(f"the search index folder {folder} is a file: move it away, then {REPAIR}")
        if path.exists() and not path.is_file():
            raise IndexUnusable(f"the search index {path} is not a file: remove it, then {REPAIR}")
        if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
            raise IndexUnusable(f"the search index folder {folder} is not writable: fix its permissions, then {REPAIR}")

    def _fall_back(self, stats, why: str | None, repairable: bool) -> None:
        """Answer exactly from the database while the saved file cannot be used, and say why."""
        self._hnsw, self.damaged = None, why
        self._load_exact(stats)
        state = f"the search index {self.path} " + (f"is damaged or stale ({why})" if why else "is not built yet")
        background = repairable and self.background_repair
        self.note = (f"{why}; searching exactly meanwhile" if not repairable else
                     f"{state}; searching exactly while it is rebuilt in the background" if background else
                     f"{state}; searching exactly until you {REPAIR} to repair it")
        self.status, self._seen = self.note, self._files_seen()
        if background:
            self._worker = threading.Thread(target=self._rebuild_in_background, daemon=True)
            self._worker.start()

    def _files_seen(self):
        return _stat_key(self.folder), _stat_key(self.path), _stat_key(self.path.with_suffix(".json"))

    def _rebuild_in_background(self) -> None:
        """Rebuild outside the lock, so searches go on exactly meanwhile; the new index is swapped in once saved."""
        try:
            self._update(self.store.embedding_stats(self.model), True, None, strict=True)
        except Exception as e:  # a failed rebuild must leave the site answering exactly, not take it down
            with self._lock:
                self.note = f"the search index {self.path} could not be rebuilt ({e}); searching exactly: {REPAIR}"
                self.status, self._seen = self.note, self._files_seen()
        finally:
            self._worker = None

    def _chunks(self, **kwargs):
        # SQLite serialises a connection's use across threads, so a rebuild thread may read through it too.
        return self.store.iter_embeddings(self.model, **kwargs)

    def _dim(self) -> int:
        return next((mat.shape[1] for _, mat in self._chunks(chunk=1)), 0)

    def _reconcile(self, index: HnswIndex, stats, progress) -> bool:
        changed, progress = False, progress or (lambda n: None)
        for ids, mat in self._chunks(after_id=max(index.live, default=0)):
            index.add(ids, mat)
            changed = True
            progress(len(ids))
        if len(index.live) != stats[0] or sum(index.live) != stats[2]:
            # Deletions, or rows added below the last id: reconcile by set difference.
            in_db = self.store.embedding_ids(self.model)
            index.remove(index.live - in_db)
            for ids, mat in self._chunks(ids=in_db - index.live):
                index.add(ids, mat)
            changed = True
        return changed

    def _load_exact(self, stats) -> None:
        """Hold the database's vectors for an exact scan, reading only rows added since last time when it can."""
        parts = [self._exact] if self._exact is not None and len(self._exact[0]) else []
        parts += self._chunks(after_id=int(parts[0][0][-1]) if parts else 0)
        if sum(len(p[0]) for p in parts) != stats[0] or sum(int(p[0].sum()) for p in parts) != stats[2]:
            parts = list(self._chunks())  # rows deleted or added below the last id: read them all afresh
        self._exact, self._stats = _joined(parts), stats

    def _scan_db(self, query: np.ndarray, k: int, allowed) -> tuple[np.ndarray, np.ndarray]:
        ids, mat = _joined(list(self._chunks(ids=allowed)))
        return exact_search(mat, ids, query, k)
