"""Every error a user can cause or fix, under one base class.

The CLI turns a ``CuratorError`` into one line and exit code 1, the site into a 4xx page or JSON
body with the message; anything else is a bug and is allowed to show as one.
"""
from __future__ import annotations


class CuratorError(Exception):
    """Base class for every error a user can cause or fix; ``status`` is its HTTP code."""

    status = 400


class BadRequest(CuratorError, ValueError):
    """A setting, prompt, id or input file that cannot be used."""


class RecipeError(BadRequest):
    """A recipe with a missing, malformed or out-of-range setting."""


class UnknownPreset(BadRequest):
    """A model preset name that is not registered."""


class ImageTooLarge(BadRequest):
    """An image file whose pixel count is over the limit for decoding it."""


class NotFound(CuratorError, LookupError):
    """Something asked for by id that does not exist."""

    status = 404


class ImageNotFound(NotFound):
    """No image with that id."""


class JobNotFound(NotFound):
    """No job with that id."""


class CollectionNotFound(NotFound):
    """No collection by that name."""


class WeightsMissing(CuratorError):
    """Model weights are not in the cache and cannot be downloaded."""

    status = 503


class WeightsCorrupt(CuratorError):
    """A weights file exists but does not match what it is meant to be."""

    status = 503


class SchemaTooNew(CuratorError):
    """The database was written by a newer clip-curator (or an unreleased one)."""

    status = 500


class DatabaseBusy(CuratorError):
    """Another process kept the database locked past the waiting time; nothing was changed."""

    status = 503


class JobBusy(CuratorError):
    """The job is being run by another live worker."""

    status = 409


class Cancelled(CuratorError):
    """The job was cancelled while it ran."""

    status = 409


class IndexUnusable(CuratorError):
    """The vector index folder cannot be read or written (it is a file, or not permitted)."""

    status = 503


class ClusterError(CuratorError):
    """A Ray cluster that cannot be reached, or cannot run what a job asks for."""

    status = 503


class ClusterUnreachable(ClusterError):
    """No Ray cluster answers at the address given."""


class NoDevice(ClusterError):
    """No node of the cluster has the device a job asks for."""
