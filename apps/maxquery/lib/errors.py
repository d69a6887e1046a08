"""Errors of the app and their translation into HTTP responses with a message that names the problem."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import HTTPException
from monailabel.interfaces.exception import (
    ImageNotFoundException,
    LabelNotFoundException,
    MONAILabelError,
    MONAILabelException,
)

from bundle.transforms.validation import read_error_reason

__all__ = [
    "ForbiddenError",
    "InvalidInputError",
    "ModelNotFoundError",
    "NotFoundError",
    "http_errors",
    "short_error",
]

logger = logging.getLogger(__name__)


class InvalidInputError(ValueError):
    """An uploaded image or label, or a request parameter, that the app cannot use (HTTP 422)."""


class NotFoundError(LookupError):
    """An unknown image id, model, strategy or scoring method (HTTP 404)."""


class ForbiddenError(PermissionError):
    """A request the server is configured not to carry out, whoever asks (HTTP 403)."""


class ModelNotFoundError(FileNotFoundError):
    """The model file is missing: the server runs, but cannot infer or score until one is trained (HTTP 503)."""


def _invalid_volume_error() -> type[Exception]:
    """The bundle's input-check error, imported late so that this module does not need the bundle on the path."""
    from bundle.transforms import InvalidVolumeError

    return InvalidVolumeError


def short_error(error: BaseException, limit: int = 300) -> str:
    """The first line of an error's message (readers list every reader they tried), cut to ``limit`` characters,
    after plain words for a truncated or empty file (:func:`~bundle.transforms.validation.read_error_reason`)."""
    text = str(error).strip()
    first_line = text.splitlines()[0] if text else ""
    short = f"{type(error).__name__}: {first_line[:limit]}" if first_line else type(error).__name__
    plain = read_error_reason(error)
    return f"{plain}: {short}" if plain else short


def _message(error: BaseException) -> str:
    return error.msg if isinstance(error, MONAILabelException) else str(error)


def _rejected(status: int, action: str, error: BaseException) -> HTTPException:
    logger.info("%s refused (HTTP %d): %s", action, status, _message(error))
    return HTTPException(status_code=status, detail=_message(error))


@contextmanager
def http_errors(action: str) -> Iterator[None]:
    """Re-raise errors from ``action`` as ``HTTPException`` so that clients get a status and a JSON message.

    ``HTTPException`` raised inside a request handler becomes ``{"detail": message}`` with that status; outside a
    request (background train/scoring processes) it is a plain exception with the same message.

    Args:
        action: what was being done, for unexpected errors (e.g. ``"inference with model 'maxquery'"``).
    """
    try:
        yield
    except HTTPException:
        raise
    except (ImageNotFoundException, LabelNotFoundException, NotFoundError) as error:
        raise _rejected(404, action, error) from error
    except (InvalidInputError, _invalid_volume_error()) as error:
        raise _rejected(422, action, error) from error
    except ForbiddenError as error:
        raise _rejected(403, action, error) from error
    except ModelNotFoundError as error:
        raise _rejected(503, action, error) from error
    except MONAILabelException as error:
        raise _rejected(400 if error.error == MONAILabelError.INVALID_INPUT else 500, action, error) from error
    except Exception as error:
        logger.exception("%s failed", action)
        raise HTTPException(status_code=500, detail=f"{action} failed: {type(error).__name__}: {error}") from error
