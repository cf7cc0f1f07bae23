"""What the client tests share: the daemon they talk to (from the environment), a minimal
RESP client to look at Redis directly, and polling with a deadline.

The tests run against a real ``botfleet run`` daemon and Redis server, which the Rust suite
``tests/it/clients.rs`` starts: ``BOTFLEET_URL``, ``BOTFLEET_TOKEN`` and
``BOTFLEET_REDIS_URL`` say where. Without ``BOTFLEET_URL`` every test is skipped.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import unittest
import urllib.parse
from typing import Any, Callable, List, Optional

from botfleet_client import Client

HERE = os.path.dirname(os.path.abspath(__file__))


def env(name: str) -> str:
    """The variable ``name``; skips the test when it is unset."""
    value = os.environ.get(name)
    if not value:
        raise unittest.SkipTest(f"{name} is not set: run these tests through tests/it/clients.rs")
    return value


def client(token: Optional[str] = "default", timeout: float = 10.0) -> Client:
    """A client of the daemon under test, with its token (``token=None``: without one)."""
    url = env("BOTFLEET_URL")
    if token == "default":
        token = os.environ.get("BOTFLEET_TOKEN") or None
    return Client(url, token=token, timeout=timeout)


def poll(what: str, condition: Callable[[], Any], timeout: float = 10.0, every: float = 0.01) -> Any:
    """Calls ``condition`` until it answers something true, which it returns; fails the
    test after ``timeout`` seconds naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def python() -> str:
    """The interpreter running the tests (the one with the client installed)."""
    return sys.executable


class Resp:
    """One connection to Redis speaking RESP2: enough for a seed bot's SET and EXPIRE."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        parts = urllib.parse.urlsplit(url)
        self.sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=timeout)
        self.file = self.sock.makefile("rb")
        if parts.password:
            self.call("AUTH", *( [parts.username, parts.password] if parts.username else [parts.password]))
        db = parts.path.strip("/")
        if db:
            self.call("SELECT", db)

    def call(self, *args: Any) -> Any:
        """Sends one command; answers its reply (an error reply raises)."""
        out = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self.sock.sendall(b"".join(out))
        return self._reply()

    def _reply(self) -> Any:
        line = self.file.readline()
        if not line:
            raise ConnectionError("redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.file.read(n + 2)[:-2]
            return data.decode()
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply() for _ in range(n)]
        raise RuntimeError(f"unexpected reply {line!r}")

    def close(self) -> None:
        """Closes the connection."""
        self.file.close()
        self.sock.close()


def redis() -> Resp:
    """A connection to the Redis server of the daemon under test."""
    return Resp(env("BOTFLEET_REDIS_URL"))


def lines(path: str) -> List[str]:
    """The complete lines of a file another process appends to (none when it is absent)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return []
    return text.split("\n")[:-1]
