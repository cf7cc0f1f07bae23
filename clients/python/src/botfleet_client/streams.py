"""Server-sent event streams that open again after a break."""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Iterator, Optional

from ._transport import EventStream, ServerSentEvent
from .errors import TransportError, UnavailableError

log = logging.getLogger("botfleet_client")


class Reconnecting(Iterator[Any]):
    """The data of the events named ``event`` of the streams ``open_stream`` opens.

    With ``reconnect``, a stream that ends or breaks is opened again (backing off while the
    daemon is away); ``key`` gives an event's order (a round's timestamp), and events whose
    key is not above the last one seen are skipped, so each is yielded once. ``close()``
    (from any thread) ends the iteration.
    """

    def __init__(
        self,
        open_stream: Callable[[], EventStream],
        event: str,
        key: Optional[Callable[[ServerSentEvent], Any]],
        reconnect: bool,
    ) -> None:
        self._open = open_stream
        self._event = event
        self._key = key
        self._reconnect = reconnect
        self._stream: Optional[EventStream] = None
        self._last: Any = None
        self._closed = threading.Event()
        self._delay = 0.05

    def __iter__(self) -> "Reconnecting":
        return self

    def __next__(self) -> Any:
        while not self._closed.is_set():
            try:
                if self._stream is None:
                    self._stream = self._open()
                    if self._closed.is_set():
                        self._stream.close()
                        break
                event = next(self._stream)
            except StopIteration:
                self._stream = None
                if not self._reconnect or self._closed.is_set():
                    break
                continue
            except (TransportError, UnavailableError) as e:
                self._stream = None
                if not self._reconnect or self._closed.is_set():
                    if self._closed.is_set():
                        break
                    raise
                log.info("stream broke, opening it again: %s", e)
                self._closed.wait(self._delay)
                self._delay = min(self._delay * 2, 2.0)
                continue
            self._delay = 0.05
            if event.event != self._event:
                continue
            if self._key is not None:
                key = self._key(event)
                if key is not None:
                    if self._last is not None and key <= self._last:
                        continue
                    self._last = key
            return event.data
        raise StopIteration

    def close(self) -> None:
        """Ends the iteration; a ``next()`` blocked in another thread returns."""
        self._closed.set()
        stream = self._stream
        if stream is not None:
            stream.close()

    def __enter__(self) -> "Reconnecting":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

