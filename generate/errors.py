"""Exceptions raised by the generation side; the CLI and the site turn them into one-line messages."""


class CuratorError(Exception):
    """Base class for every error a user can cause or fix."""


class BadRequest(CuratorError, ValueError):
    """A setting, prompt or input file that cannot be used."""


class UnknownPreset(BadRequest):
    """A model preset name that is not registered."""


class WeightsMissing(CuratorError):
    """Model weights are not in the cache and cannot be downloaded."""


class WeightsCorrupt(CuratorError):
    """A weights file exists but does not match the architecture it is meant for."""


class ImageNotFound(CuratorError, LookupError):
    """No image with that id."""


class JobNotFound(CuratorError, LookupError):
    """No job with that id."""


class Cancelled(CuratorError):
    """The job was cancelled while it ran."""
