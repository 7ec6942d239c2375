"""A gallery that learns what you keep: a logistic regression on CLIP embeddings of your own labels.

Keepers are starred images or those rated 4-5; rejects are those in the trash or rated 1. The
model is an L2-regularised logistic regression (a linear head on the unit-norm embedding, with
a bias), fitted by Nesterov-accelerated gradient descent in plain numpy: the loss is smooth with
a curvature bounded by 1/4 + lambda for unit-norm inputs, so a fixed step converges in a few
hundred cheap passes (well under a second for thousands of labels). Classes are weighted to
balance, since a night's triage rejects nine images for every one it keeps.

It stays off until it has at least ``MIN_PER_CLASS`` labels of each kind, and is refitted only
when the labels change (a counter kept by the database), never per request.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from gallery.store import Store

MIN_PER_CLASS = 8
L2 = 1e-3
STEPS = 300


@dataclass(frozen=True)
class TasteModel:
    """A fitted linear keep/reject scorer over one CLIP's embeddings."""

    model: str
    weights: np.ndarray
    bias: float
    keepers: int
    rejects: int

    def scores(self, vectors: np.ndarray) -> np.ndarray:
        """The log-odds that each image is a keeper (higher: more likely kept)."""
        return vectors.astype(np.float32) @ self.weights + self.bias

    @property
    def labels(self) -> int:
        """How many labels it learnt from."""
        return self.keepers + self.rejects


def fit(vectors: np.ndarray, labels: np.ndarray, l2: float = L2, steps: int = STEPS,
        tol: float = 1e-4) -> tuple[np.ndarray, float]:
    """(weights, bias) of a class-balanced, L2-regularised logistic regression (labels 1 keep, 0 reject)."""
    x = np.hstack([vectors.astype(np.float32), np.ones((len(vectors), 1), np.float32)])
    y = labels.astype(np.float32)
    pos = max(1.0, float(y.sum()))
    neg = max(1.0, len(y) - float(y.sum()))
    sample_w = np.where(y == 1, 0.5 / pos, 0.5 / neg).astype(np.float32)
    # Curvature of the weighted loss is at most max|x|^2 / 4 (x carries the bias term), plus L2.
    step = np.float32(1.0 / (0.25 * float((x * x).sum(1).max()) + l2))
    decay = np.r_[np.full(x.shape[1] - 1, l2, np.float32), np.float32(0)]
    w = prev = np.zeros(x.shape[1], np.float32)
    for t in range(1, steps + 1):
        look = w + np.float32((t - 1) / (t + 2)) * (w - prev)
        p = 1.0 / (1.0 + np.exp(-(x @ look)))
        grad = x.T @ (sample_w * (p - y)) + decay * look
        prev, w = w, look - step * grad
        if float(np.abs(grad).max()) < tol:
            break
    return w[:-1].copy(), float(w[-1])


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve: the chance a random keeper scores above a random reject."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    return float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())


class Taste:
    """The taste model of one gallery and CLIP, refitted when the labels change. Thread-safe."""

    def __init__(self, model: str, min_per_class: int = MIN_PER_CLASS):
        self.model = model
        self.min_per_class = min_per_class
        self._lock = threading.Lock()
        self._fitted: tuple[tuple, TasteModel | None] | None = None
        self._scored: tuple[tuple, dict[int, float]] | None = None

    def current(self, store: Store) -> TasteModel | None:
        """The model for the labels as they are now (None while there are too few of either kind)."""
        stamp = (store.counter("labels"), store.counter("embeddings"))
        with self._lock:
            if self._fitted is not None and self._fitted[0] == stamp:
                return self._fitted[1]
            ids, labels, vectors = store.labelled(self.model)
            keepers, rejects = int(labels.sum()), int(len(labels) - labels.sum())
            fitted = None
            if min(keepers, rejects) >= self.min_per_class:
                weights, bias = fit(vectors, labels)
                fitted = TasteModel(self.model, weights, bias, keepers, rejects)
            self._fitted = (stamp, fitted)
            return fitted

    def scores(self, store: Store) -> dict[int, float]:
        """Every embedded image's score under the current model ({} while it is off), kept until labels change."""
        model = self.current(store)
        stamp = self._fitted[0]
        with self._lock:
            if self._scored is not None and self._scored[0] == stamp:
                return self._scored[1]
        out: dict[int, float] = {}
        if model is not None:
            for ids, vectors in store.iter_embeddings(self.model):
                out.update(zip(ids.tolist(), model.scores(vectors).tolist()))
        with self._lock:
            self._scored = (stamp, out)
        return out

    def rank(self, store: Store, ids: list[int], reverse: bool = False) -> list[int]:
        """These image ids, likely keepers first (likely rejects first with ``reverse``); as given while off."""
        scores = self.scores(store)
        if not scores:
            return list(ids)
        sign = 1.0 if reverse else -1.0
        return sorted(ids, key=lambda i: sign * scores.get(i, -1e9 if not reverse else 1e9))

    @staticmethod
    def score_ids(store: Store, model: TasteModel, ids: list[int]) -> list[tuple[int, float]]:
        """(id, score) of the images among ``ids`` that have an embedding of the model's CLIP."""
        out = []
        for chunk_ids, vectors in store.iter_embeddings(model.model, ids=ids):
            out.extend(zip(chunk_ids.tolist(), model.scores(vectors).tolist()))
        return out
