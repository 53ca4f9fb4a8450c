"""A failed request as data: an HTTP status and a message that names the problem.

``RequestError`` is raised inside one process; ``Failure`` is what crosses a
process boundary (deployment -> ingress) as part of a reply, so that no caller
depends on how Ray wraps a remote exception. :func:`python_error` is the same
failure for a Python caller of ``Ingress.infer`` (through a DeploymentHandle):
the project's exception types rather than HTTP statuses.
"""

from __future__ import annotations

from dataclasses import dataclass

from eclip_ray.actor.spec import InvalidInput, ModelUnavailable, Overloaded, UnknownModel
from eclip_ray.errors import EclipError


@dataclass(frozen=True)
class Failure:
    status: int
    message: str
    retry_after_s: int | None = None

    def headers(self) -> dict[str, str]:
        return {} if self.retry_after_s is None else {"Retry-After": str(self.retry_after_s)}


class RequestError(EclipError):
    """A request that gets an error response; 503s carry a Retry-After."""

    def __init__(self, status: int, message: str, retry_after_s: int | None = None, overloaded: bool = False) -> None:
        super().__init__(message)
        self.failure = Failure(status, message, retry_after_s)
        self.overloaded = overloaded


def unavailable(message: str, retry_after_s: int, overloaded: bool = False) -> RequestError:
    """A retryable failure: 503 with Retry-After; ``overloaded`` when the front refused it for load."""
    return RequestError(503, message, retry_after_s, overloaded)


def python_error(error: RequestError) -> EclipError:
    """``error`` as a Python caller gets it: UnknownModel (404), InvalidInput (other 4xx), Overloaded (refused
    for load), ModelUnavailable (other 503s), EclipError (the server's fault)."""
    status, message = error.failure.status, error.failure.message
    if status == 404:
        return UnknownModel(message)
    if 400 <= status < 500:
        return InvalidInput(message)
    if status == 503:
        return Overloaded(message) if error.overloaded else ModelUnavailable(message)
    return EclipError(message)
