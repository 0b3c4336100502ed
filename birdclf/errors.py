"""The exceptions birdclf raises: each names the problem, and each maps to an HTTP status."""

from __future__ import annotations

__all__ = [
    "BirdclfError", "InvalidImageError", "EmptyImageError", "ImageTooLargeError",
    "UnsupportedMediaError", "ModelNotFoundError", "ModelFormatError", "ExportError",
    "DataError", "WeightsUnavailableError", "UrlFetchError", "SettingsError", "BusyError",
]


class BirdclfError(Exception):
    """Base class of every birdclf error; `status` is the HTTP status it maps to."""

    status = 400


class InvalidImageError(BirdclfError, ValueError):
    """The bytes are not a readable image (not an image, corrupt or truncated)."""


class EmptyImageError(InvalidImageError):
    """No image was given (zero bytes)."""


class ImageTooLargeError(BirdclfError, ValueError):
    """The image is over the byte or pixel limit."""

    status = 413


class UnsupportedMediaError(BirdclfError, ValueError):
    """The request's content type is not one birdclf reads."""

    status = 415


class UrlFetchError(BirdclfError, ValueError):
    """An image URL was refused or could not be fetched."""


class ModelNotFoundError(BirdclfError, FileNotFoundError):
    """No model file where one was expected."""

    status = 503


class ModelFormatError(BirdclfError, ValueError):
    """The model file is not a birdclf ONNX model (missing metadata, wrong inputs)."""

    status = 503


class ExportError(BirdclfError, RuntimeError):
    """An ONNX export failed its checks (checker or torch/onnxruntime parity)."""


class DataError(BirdclfError, ValueError):
    """A data set is missing, empty or laid out in a way birdclf cannot read."""


class WeightsUnavailableError(BirdclfError, RuntimeError):
    """No pretrained weights could be found (hub unreachable and no offline package)."""


class SettingsError(BirdclfError, ValueError):
    """An environment setting has a value birdclf cannot use; the message names the variable."""

    status = 503


class BusyError(BirdclfError, RuntimeError):
    """The server is at capacity; the client may retry shortly."""

    status = 503
