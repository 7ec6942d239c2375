"""What every view needs: the instance, the request's store, and the app's long-lived services."""
from __future__ import annotations

import threading

import torch
from flask import current_app, g

from gallery.instance import Config, Instance
from gallery.store import Store
from generate.models import ModelCache
from search.index import GalleryIndex
from search.query import Searcher
from generate.presets import clip_spec
from search.embed import Embedder, search_clip_name
from search.service import open_index
from search.taste import Taste

EXTENSION = "clip_curator"


class Services:
    """One app's models and search indexes, shared by request threads, loaded on first use.

    Indexes outlive requests, so each reads through a connection of its own (a GalleryIndex is
    thread-safe); a damaged index file is rebuilt in the background while searches scan exactly.
    """

    def __init__(self, instance: Instance, models: ModelCache | None = None):
        self.instance = instance
        self._models = models
        self._lock = threading.Lock()
        self._indexes: dict[str, tuple[GalleryIndex, Store]] = {}
        self._embedders: dict[str, Embedder] = {}  # by CLIP name: each keeps its cache of query texts
        self._clip_name: tuple[tuple, str] | None = None
        self._tastes: dict[str, Taste] = {}
        self._config: tuple[tuple, Config] | None = None

    def config(self) -> Config:
        """The instance settings, re-read only when the file changes (so set-password applies at once)."""
        try:
            st = self.instance.config_path.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = ()
        cached = self._config
        if cached is None or cached[0] != stamp:
            cached = self._config = (stamp, self.instance.config())
        return cached[1]

    @property
    def models(self) -> ModelCache:
        """The app's model cache (never downloads: the site must not wait on a download)."""
        with self._lock:
            return self._model_cache()

    def _model_cache(self) -> ModelCache:
        # The caller holds the lock: models load one at a time.
        if self._models is None:
            self._models = ModelCache(self.instance, progress=False, fetch=False)
        return self._models

    def _search_clip(self, store: Store) -> str:
        # Which CLIP searches depends on the settings and on what the gallery was embedded with:
        # asked again only when either has changed.
        stamp = (store.counter("embeddings"), self.config().search_clip)
        if self._clip_name is None or self._clip_name[0] != stamp:
            self._clip_name = (stamp, search_clip_name(store, self.instance))
        return self._clip_name[1]

    def search_model(self, store: Store) -> str:
        """The label of the embeddings the gallery searches (and stacks, and learns taste) with."""
        with self._lock:
            return clip_spec(self._search_clip(store)).id

    def taste(self, store: Store) -> Taste:
        """The taste model over the search CLIP's embeddings (refitted as labels change)."""
        model = self.search_model(store)
        with self._lock:
            if model not in self._tastes:
                self._tastes[model] = Taste(model)
            return self._tastes[model]

    def searcher(self, store: Store) -> Searcher:
        """A Searcher over this request's store, with the app's shared embedder and index for its CLIP."""
        with self._lock:
            name = self._search_clip(store)
            if name not in self._embedders:
                self._embedders[name] = Embedder(self._model_cache().clip(name, torch.device("cpu")))
            embedder = self._embedders[name]
            if embedder.id not in self._indexes:
                own = Store(self.instance.db_path)
                self._indexes[embedder.id] = (open_index(own, self.instance, embedder.id, background=True), own)
            index = self._indexes[embedder.id][0]
        return Searcher(store, embedder, index)

    def close(self) -> None:
        """Release models and the indexes' connections."""
        with self._lock:
            for index, own in self._indexes.values():
                index.wait()
                own.close()
            self._indexes.clear()
            if self._models is not None:
                self._models.close()


def services() -> Services:
    """This app's services."""
    return current_app.extensions[EXTENSION]


def instance() -> Instance:
    """The instance folder of this app."""
    return services().instance


def get_store() -> Store:
    """This request's store connection (opened lazily)."""
    if "store" not in g:
        g.store = Store(instance().db_path)
    return g.store


def close_store(_exc=None) -> None:
    """Close the request's connection, if it opened one."""
    store = g.pop("store", None)
    if store is not None:
        store.close()


def searcher():
    """A Searcher for this request."""
    return services().searcher(get_store())
