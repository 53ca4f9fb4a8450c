"""A failed request as data: an HTTP status and a message that names the problem.

``RequestError`` is raised inside one process; ``Failure`` is what crosses a
process boundary (deployment -> ingress) as part of a reply, so that no caller
depends on how Ray wraps a remote exception.
"""

from __future__ import annotations

from dataclasses import dataclass

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

    def __init__(self, status: int, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.failure = Failure(status, message, retry_after_s)


def unavailable(message: str, retry_after_s: int) -> RequestError:
    """A retryable failure: 503 with Retry-After."""
    return RequestError(503, message, retry_after_s)
