"""A bot's admin messages (seed 004) through the daemon: at least once, in order."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Deque, Dict, Iterator, List, Optional, Type, Union

from .errors import TransportError, UnavailableError

if TYPE_CHECKING:
    from .client import Client

log = logging.getLogger("botfleet_client")

# Ids remembered by an inbox to skip a message delivered again within the same inbox.
_SEEN_MAX = 100_000


@dataclass(frozen=True)
class AdminMessage:
    """One admin message: ``id`` (the idempotence key), ``sender`` (the JSON ``from``),
    the ``message`` text, ``sent_at`` (Unix ms, when known) and the queue entry as stored
    (``raw``)."""

    id: str
    message: str
    sender: Optional[str] = None
    sent_at: Optional[int] = None
    raw: Optional[str] = None

    @classmethod
    def from_json(cls, value: Dict[str, Any]) -> "AdminMessage":
        """The message of one entry of the inbox answer."""
        sent_at = value.get("sent_at")
        return cls(
            id=str(value["id"]),
            message=str(value.get("message", "")),
            sender=value.get("from"),
            sent_at=None if sent_at is None else int(sent_at),
            raw=value.get("raw"),
        )


class AdminInbox(Iterator[AdminMessage]):
    """The iterator of :meth:`Client.admin_inbox`.

    Asking for the next message acknowledges the previous one. An acknowledgement that
    fails (an outage) is sent again before the next read; the message it missed comes back
    and is skipped by id. Use it as a context manager to acknowledge the last message when
    the block ends without an exception.
    """

    def __init__(self, client: "Client", pid: int, wait_ms: int, batch: int, stop: Optional[threading.Event]) -> None:
        self._client = client
        self.pid = pid
        self._wait_ms = wait_ms
        self._batch = batch
        self._stop = stop or threading.Event()
        self._buffer: Deque[AdminMessage] = deque()
        self._seen: "OrderedDict[str, None]" = OrderedDict()
        self._unacked: List[str] = []
        self._last: Optional[str] = None
        self._delay = 0.05

    def __iter__(self) -> "AdminInbox":
        return self

    def __next__(self) -> AdminMessage:
        if self._last is not None:
            self._unacked.append(self._last)
            self._last = None
        self._flush()
        while not self._stop.is_set():
            while self._buffer:
                message = self._buffer.popleft()
                if message.id in self._seen:
                    # Handed out before and its acknowledgement has not landed: ack again.
                    if message.id not in self._unacked:
                        self._unacked.append(message.id)
                    continue
                self._remember(message.id)
                self._last = message.id
                return message
            self._flush()
            try:
                received, stale = self._client._admin_read(self.pid, self._batch, self._wait_ms)
            except (UnavailableError, TransportError) as e:
                log.info("admin inbox %s: read failed, retrying: %s", self.pid, e)
                stale, received = True, []
            if stale and not received:
                # The daemon cannot read the queue now (Redis is away): wait, then look again.
                self._stop.wait(self._delay)
                self._delay = min(self._delay * 2, 1.0)
                continue
            self._delay = 0.05
            self._buffer.extend(received)
        self._flush()
        raise StopIteration

    def _remember(self, id: str) -> None:
        self._seen[id] = None
        while len(self._seen) > _SEEN_MAX:
            self._seen.popitem(last=False)

    def _flush(self) -> Optional[Exception]:
        """Sends the pending acknowledgements; answers the outage that kept them pending."""
        if not self._unacked:
            return None
        try:
            self._client.admin_ack(self.pid, self._unacked)
            self._unacked = []
        except (UnavailableError, TransportError) as e:
            log.info("admin inbox %s: acknowledgement failed, sent again later: %s", self.pid, e)
            return e
        return None

    def ack(self, message: Union[AdminMessage, str, None] = None) -> None:
        """Acknowledges ``message`` (default: the last one handed out) now, with those
        still pending. Raises the outage's error when the daemon could not be told (they stay
        pending, sent again with the next acknowledgement or read)."""
        id = message.id if isinstance(message, AdminMessage) else message
        if id is None:
            id = self._last
        if id is None:
            return
        if id == self._last:
            self._last = None
        if id not in self._unacked:
            self._unacked.append(id)
        error = self._flush()
        if error is not None:
            raise error

    def close(self) -> None:
        """Stops the iteration; the last message handed out stays unacknowledged unless
        :meth:`ack` was called (it will be delivered again)."""
        self._stop.set()

    def __enter__(self) -> "AdminInbox":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if exc_type is None:
            self.ack()
        self.close()
