"""HTTP/1.1 over the standard library: JSON requests and server-sent event streams."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import urllib.parse
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

from .errors import BotfleetError, TransportError, error_for

USER_AGENT = "botfleet-client-python/0.1.0"

# Failures of a kept-alive connection that the server may have closed while it was idle:
# the request never reached it, so it is sent once more on a fresh connection.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


def _quote(segment: Any) -> str:
    """One path segment, percent-encoded (``/`` included)."""
    return urllib.parse.quote(str(segment), safe="")


def path(*segments: Any) -> str:
    """``/a/b/c`` from segments, each percent-encoded."""
    return "/" + "/".join(_quote(s) for s in segments)


class Transport:
    """Requests to one daemon. Thread-safe: each thread keeps a connection of its own."""

    def __init__(self, url: str, token: Optional[str], timeout: float) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url must be http://HOST[:PORT] or https://..., got {url!r}")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port
        self.base = parts.path.rstrip("/")
        self.token = token
        self.timeout = timeout
        self._local = threading.local()

    def _new_connection(self, timeout: Optional[float]) -> http.client.HTTPConnection:
        if self.scheme == "https":
            return http.client.HTTPSConnection(
                self.host, self.port, timeout=timeout, context=ssl.create_default_context()
            )
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def headers(self, has_body: bool) -> Dict[str, str]:
        """The headers of every request: the token when one is set."""
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        if has_body:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def target(self, route: str, query: Optional[Mapping[str, Any]] = None) -> str:
        """The request target of ``route`` with ``query`` (``None`` values left out)."""
        target = self.base + route
        if query:
            pairs = [(k, _query_value(v)) for k, v in query.items() if v is not None]
            if pairs:
                target += "?" + urllib.parse.urlencode(pairs)
        return target

    def request(
        self,
        method: str,
        route: str,
        body: Any = None,
        query: Optional[Mapping[str, Any]] = None,
        wait_ms: int = 0,
        expect_body: bool = True,
    ) -> Tuple[int, Any]:
        """Sends one request; answers ``(status, decoded JSON)`` or raises the status's error.

        ``wait_ms`` is how long the daemon may hold the request (a long poll): the socket
        timeout is the client's timeout plus that.
        """
        payload = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        target = self.target(route, query)
        timeout = self.timeout + wait_ms / 1000.0
        headers = self.headers(payload is not None)
        for attempt in (0, 1):
            conn: Optional[http.client.HTTPConnection] = getattr(self._local, "conn", None)
            reused = conn is not None and conn.sock is not None
            if conn is None:
                conn = self._new_connection(timeout)
                self._local.conn = conn
            conn.timeout = timeout
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            try:
                conn.request(method, target, body=payload, headers=headers)
                response = conn.getresponse()
                raw = response.read()
                status = response.status
                if response.will_close:
                    conn.close()
            except _STALE as e:
                conn.close()
                if reused and attempt == 0:
                    continue
                raise TransportError(f"{method} {route}: connection lost: {e}") from e
            except socket.timeout as e:
                conn.close()
                raise TransportError(f"{method} {route}: no answer within {timeout:.1f} s") from e
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                raise TransportError(f"{method} {route}: {e}") from e
            decoded = _decode(raw)
            if status >= 400:
                raise error_for(status, decoded, f"{method} {route} answered {status}")
            if expect_body and decoded is None and raw:
                raise BotfleetError(
                    f"{method} {route}: answer is not JSON: {raw[:200]!r}", status=status
                )
            return status, decoded
        raise AssertionError("unreachable")

    def stream(self, route: str, query: Optional[Mapping[str, Any]], read_timeout: Optional[float]) -> "EventStream":
        """Opens ``GET route`` as a server-sent event stream."""
        return EventStream(self, route, query, read_timeout)

    def close(self) -> None:
        """Closes this thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _decode(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


@dataclass(frozen=True)
class ServerSentEvent:
    """One event of a stream: its name (``message`` when unnamed), data and id."""

    event: str
    data: Any
    id: Optional[str] = None


class EventStream(Iterator[ServerSentEvent]):
    """A ``text/event-stream`` answer, event by event. Close it (or use ``with``) when done.

    ``data`` is decoded as JSON when it is JSON, else left as text. Comment lines (the
    daemon's keep-alives) are skipped. The iteration ends when the daemon closes the stream;
    a read that waits longer than ``read_timeout`` raises :class:`TransportError`.
    """

    def __init__(
        self,
        transport: Transport,
        route: str,
        query: Optional[Mapping[str, Any]],
        read_timeout: Optional[float],
    ) -> None:
        self._conn = transport._new_connection(transport.timeout)
        headers = transport.headers(False)
        headers["Accept"] = "text/event-stream"
        try:
            self._conn.request("GET", transport.target(route, query), headers=headers)
            # Kept here: once the answer says `Connection: close`, the connection hands its
            # socket over to the response and forgets it.
            self._sock = self._conn.sock
            self._response = self._conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            self._conn.close()
            raise TransportError(f"GET {route}: {e}") from e
        if self._response.status >= 400:
            raw = self._response.read()
            self._conn.close()
            raise error_for(self._response.status, _decode(raw), f"GET {route} answered {self._response.status}")
        if self._sock is not None:
            self._sock.settimeout(read_timeout)
        self._route = route
        self._closed = False

    def __iter__(self) -> "EventStream":
        return self

    def __next__(self) -> ServerSentEvent:
        event: str = "message"
        data: List[str] = []
        last_id: Optional[str] = None
        while True:
            if self._closed:
                raise StopIteration
            try:
                line = self._response.readline()
            except socket.timeout as e:
                if self._closed:
                    raise StopIteration from None
                self.close()
                raise TransportError(f"GET {self._route}: no event within the read timeout") from e
            except (OSError, http.client.HTTPException, ValueError, AttributeError) as e:
                # AttributeError: http.client's reader after the socket was closed under it.
                if self._closed:
                    raise StopIteration from None
                self.close()
                raise TransportError(f"GET {self._route}: stream broke: {e}") from e
            if not line:
                self.close()
                raise StopIteration
            text = line.decode("utf-8").rstrip("\r\n")
            if text == "":
                if data:
                    joined = "\n".join(data)
                    decoded = _decode(joined.encode())
                    return ServerSentEvent(event, joined if decoded is None else decoded, last_id)
                event, data = "message", []
                continue
            if text.startswith(":"):
                continue
            name, _, value = text.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
            elif name == "id":
                last_id = value

    def close(self) -> None:
        """Closes the connection; the iteration ends. Safe from another thread: a read
        blocked in ``next()`` returns (the iteration stops)."""
        if not self._closed:
            self._closed = True
            sock = self._sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._conn.close()
            self._response.close()

    def __enter__(self) -> "EventStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
