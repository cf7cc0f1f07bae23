"""Errors of the botfleet client.

Every error the daemon answers is a :class:`BotfleetError` carrying the HTTP ``status``, the
daemon's message and, for a 400, the ``field`` it blames. One subclass per status the API
documents lets a caller catch what it can handle::

    try:
        client.add_task("nope", {})
    except BadRequestError as e:
        print(e.field)        # "type"
"""

from __future__ import annotations

from typing import Any, Optional


class BotfleetError(Exception):
    """An error answered by the daemon, or the daemon not answering.

    Attributes:
        status: the HTTP status (``None`` when no answer came: see :class:`TransportError`).
        field: the request field the daemon blames (400), else ``None``.
        message: the daemon's ``error`` text.
        body: the whole decoded answer, when it was JSON.
    """

    def __init__(
        self,
        message: str,
        status: Optional[int] = None,
        field: Optional[str] = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.field = field
        self.body = body

    def __str__(self) -> str:
        prefix = f"{self.status} " if self.status is not None else ""
        return f"{prefix}{self.message}"


class BadRequestError(BotfleetError):
    """400: the request was refused as bad; ``field`` names the culprit. Nothing was stored."""


class UnauthorizedError(BotfleetError):
    """401: a mutation without the right bearer token (the daemon's ``api.token``)."""


class NotFoundError(BotfleetError):
    """404: no such task, lock, identity, session... (or no such endpoint)."""


class ConflictError(BotfleetError):
    """409: a stale task lease, a lock token that no longer holds its lock, a lost race."""


class UnavailableError(BotfleetError):
    """503: the daemon's storage refused (memory or outbox full), or Redis is needed and down.

    Nothing was stored: the request can be sent again.
    """


class TransportError(BotfleetError):
    """No answer: the connection was refused or broke, or the request timed out.

    ``status`` is ``None``. Whether a mutation was applied is unknown.
    """


class LockBusy(ConflictError):
    """The lock was held by another holder for the whole ``wait_ms``."""

    def __init__(self, name: str, message: str = "lock busy", body: Any = None) -> None:
        super().__init__(f"{name}: {message}", status=409, body=body)
        self.name = name


class LockLost(BotfleetError):
    """A lock held through :meth:`Client.lock` stopped being ours before it was released.

    Either the daemon answered that the token no longer holds it (it expired, or Redis lost
    it), or no extension succeeded within two thirds of its TTL. What ran under it may have
    overlapped another holder: the fencing token is how a protected resource tells.
    """

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"lock {name!r} lost: {reason}")
        self.name = name
        self.reason = reason


_BY_STATUS = {
    400: BadRequestError,
    401: UnauthorizedError,
    404: NotFoundError,
    409: ConflictError,
    503: UnavailableError,
}


def error_for(status: int, body: Any, fallback: str) -> BotfleetError:
    """The error of an answer with ``status`` >= 400 and decoded ``body``."""
    message = fallback
    field = None
    if isinstance(body, dict):
        if isinstance(body.get("error"), str):
            message = body["error"]
        if isinstance(body.get("field"), str):
            field = body["field"]
    cls = _BY_STATUS.get(status, BotfleetError)
    return cls(message, status=status, field=field, body=body)
