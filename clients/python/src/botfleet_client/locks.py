"""Leases of the daemon's locks, and the ``with client.lock(...)`` block."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Optional, Type

from .errors import BotfleetError, LockLost

if TYPE_CHECKING:
    from .client import Client

log = logging.getLogger("botfleet_client")


@dataclass
class Lease:
    """A held lock: its ``name``, the holder's ``token``, the fencing token ``fence``
    (strictly increasing per name), its expiry (Unix ms) and the TTL it was taken for."""

    name: str
    token: str
    fence: int
    expires_at_ms: int
    ttl_ms: int


class Fence(int):
    """The fencing token of a lock held by :meth:`Client.lock`: an ``int``, plus what tells
    whether the lock is still ours.

    Attributes:
        name: the lock's name.
        lease: the lease behind it.
    """

    lease: Lease
    _lost: threading.Event
    _reason: Optional[str]

    def __new__(cls, lease: Lease) -> "Fence":
        fence = super().__new__(cls, lease.fence)
        fence.lease = lease
        fence._lost = threading.Event()
        fence._reason = None
        return fence

    @property
    def name(self) -> str:
        """The lock's name."""
        return self.lease.name

    @property
    def lost(self) -> bool:
        """Whether the lock stopped being ours (an extension was refused or none succeeded
        in time)."""
        return self._lost.is_set()

    def check(self) -> None:
        """Raises :class:`LockLost` when the lock is no longer ours: call it before an
        action that must not overlap another holder's."""
        if self._lost.is_set():
            raise LockLost(self.name, self._reason or "lost")

    def _lose(self, reason: str) -> None:
        if not self._lost.is_set():
            self._reason = reason
            self._lost.set()


class LockContext:
    """What :meth:`Client.lock` answers: enter it with ``with``."""

    def __init__(self, client: "Client", name: str, ttl_ms: int, wait_ms: int) -> None:
        if ttl_ms < 3:
            raise ValueError("ttl_ms must be at least 3")
        self._client = client
        self._name = name
        self._ttl_ms = ttl_ms
        self._wait_ms = wait_ms
        self._fence: Optional[Fence] = None
        self._done = threading.Event()
        self._keeper: Optional[threading.Thread] = None

    def __enter__(self) -> Fence:
        lease = self._client.acquire_lock(self._name, self._ttl_ms, self._wait_ms)
        self._fence = Fence(lease)
        self._keeper = threading.Thread(target=self._keep, name=f"botfleet-lock-{self._name}", daemon=True)
        self._keeper.start()
        return self._fence

    def _keep(self) -> None:
        fence = self._fence
        assert fence is not None
        ttl = self._ttl_ms / 1000.0
        last_ok = time.monotonic()
        interval = ttl / 3
        while not self._done.wait(interval):
            try:
                self._client.extend_lock(fence.lease)
                last_ok = time.monotonic()
                interval = ttl / 3
            except LockLost as e:
                fence._lose(e.reason)
                return
            except BotfleetError as e:
                # An outage or a refusal of the moment: retry soon, for two thirds of a TTL.
                if time.monotonic() - last_ok >= ttl * 2 / 3:
                    fence._lose(f"no extension succeeded for {ttl * 2 / 3:.3f} s: {e}")
                    return
                interval = max(0.01, ttl / 10)

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        fence = self._fence
        assert fence is not None and self._keeper is not None
        self._done.set()
        self._keeper.join()
        if not fence.lost:
            try:
                if not self._client.release_lock(fence.lease):
                    fence._lose("the daemon says this token no longer held it at release")
            except BotfleetError as e:
                # It expires at its TTL; nothing overlapped as long as it was held.
                log.warning("lock %s: release failed, it expires with its TTL: %s", self._name, e)
        if fence.lost and exc_type is None:
            fence.check()
