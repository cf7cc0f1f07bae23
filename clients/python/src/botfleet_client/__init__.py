"""botfleet_client: the HTTP API of a ``botfleet run`` daemon, from Python, with the standard
library alone.

    from botfleet_client import Client

    client = Client("http://127.0.0.1:8080", token=os.environ.get("BOTFLEET_TOKEN"))
    task_id = client.add_task("login", {"username": "user@example.com"}, priority=10)
    with client.lock("bet-lock:user123-agent456", ttl_ms=30_000) as fence:
        ...

See :class:`Client` for every call, and :mod:`botfleet_client.errors` for the errors.
"""

from ._transport import EventStream, ServerSentEvent
from .client import Client
from .errors import (
    BadRequestError,
    BotfleetError,
    ConflictError,
    LockBusy,
    LockLost,
    NotFoundError,
    TransportError,
    UnauthorizedError,
    UnavailableError,
)
from .inbox import AdminInbox, AdminMessage
from .locks import Fence, Lease
from .tasks import ClaimedTask, ClaimedTasks, WorkStats, completed, failed

__version__ = "0.1.0"

__all__ = [
    "AdminInbox",
    "AdminMessage",
    "BadRequestError",
    "BotfleetError",
    "ClaimedTask",
    "ClaimedTasks",
    "Client",
    "ConflictError",
    "EventStream",
    "Fence",
    "Lease",
    "LockBusy",
    "LockLost",
    "NotFoundError",
    "ServerSentEvent",
    "TransportError",
    "UnauthorizedError",
    "UnavailableError",
    "WorkStats",
    "completed",
    "failed",
]
