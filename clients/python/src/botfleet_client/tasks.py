"""Claimed tasks and the worker loop behind :meth:`Client.work`."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional

from .errors import BotfleetError, ConflictError, NotFoundError, TransportError, UnavailableError

if TYPE_CHECKING:
    from .client import Client

log = logging.getLogger("botfleet_client")

# Shortest lease the keeper plans for, however short the daemon's deadline looks.
_MIN_LEASE_MS = 300


def now_ms() -> int:
    """Unix time in milliseconds."""
    return int(time.time() * 1000)


@dataclass
class ClaimedTask:
    """A task handed to this client by :meth:`Client.claim`, under a lease.

    Attributes:
        id, type, data, priority: the task as queued (``data`` decoded JSON).
        attempt: 1 for the first delivery, then one more per retry.
        lease: the token that :meth:`Client.extend`, ``complete`` and ``fail`` need.
        deadline_ms: when the lease runs out (Unix ms) unless extended.
        lease_ms: the lease length asked for at the claim (``None``: the daemon's default).
        lost: set by :meth:`Client.work` when an extension was refused: another worker may
            have the task now, so a handler that checks it can stop early.
    """

    id: str
    type: str
    data: Any
    priority: int
    attempt: int
    lease: str
    deadline_ms: int
    lease_ms: Optional[int] = None
    lost: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)

    @classmethod
    def from_json(cls, value: Dict[str, Any], lease_ms: Optional[int]) -> "ClaimedTask":
        """A claimed task of the claim answer's ``value``."""
        return cls(
            id=str(value["id"]),
            type=str(value["type"]),
            data=value.get("data"),
            priority=int(value.get("priority") or 0),
            attempt=int(value.get("attempt") or 1),
            lease=str(value["lease"]),
            deadline_ms=int(value["deadline_ms"]),
            lease_ms=lease_ms,
        )


class ClaimedTasks(list):  # type: ignore[type-arg]
    """What :meth:`Client.claim` answers: the tasks claimed, a list; ``reported`` holds one
    outcome per entry of the claim's ``report`` list, in order (empty without one)."""

    def __init__(self, tasks: Iterable[ClaimedTask] = (), reported: Optional[List[Dict[str, Any]]] = None) -> None:
        super().__init__(tasks)
        self.reported: List[Dict[str, Any]] = list(reported or [])


def completed(task: ClaimedTask, result: Any = None) -> Dict[str, Any]:
    """The ``report`` entry that completes ``task`` (with ``result``, any JSON, if given)."""
    entry: Dict[str, Any] = {"id": task.id, "lease": task.lease}
    if result is not None:
        entry["result"] = result
    return entry


def failed(task: ClaimedTask, error: str) -> Dict[str, Any]:
    """The ``report`` entry that fails ``task`` with ``error``."""
    return {"id": task.id, "lease": task.lease, "error": error}


@dataclass
class WorkStats:
    """What :meth:`Client.work` did: tasks completed, failed (the handler raised), lost (the
    lease was gone when the task was finished: another worker has it)."""

    completed: int = 0
    failed: int = 0
    lost: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def _add(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)


class _LeaseKeeper(threading.Thread):
    """Extends one task's lease every third of it until stopped; sets ``task.lost`` when
    the daemon refuses (409/404)."""

    def __init__(self, client: "Client", task: ClaimedTask) -> None:
        super().__init__(name=f"botfleet-lease-{task.id}", daemon=True)
        self.client = client
        self.task = task
        self.done = threading.Event()
        span = task.lease_ms if task.lease_ms is not None else task.deadline_ms - now_ms()
        self.span_ms = max(_MIN_LEASE_MS, span)

    def run(self) -> None:
        interval = self.span_ms / 3000.0
        while not self.done.wait(interval):
            try:
                self.client.extend(self.task, lease_ms=self.task.lease_ms)
                interval = self.span_ms / 3000.0
            except (ConflictError, NotFoundError) as e:
                log.warning("task %s: lease lost: %s", self.task.id, e)
                self.task.lost.set()
                return
            except BotfleetError as e:
                # An outage: try again sooner, while the deadline has not passed.
                if now_ms() >= self.task.deadline_ms:
                    log.warning("task %s: no extension before the deadline: %s", self.task.id, e)
                    self.task.lost.set()
                    return
                interval = min(interval, max(0.05, self.span_ms / 10000.0))

    def stop(self) -> None:
        self.done.set()
        self.join()


def _until_deadline(task: ClaimedTask, call: Callable[[], Any]) -> Any:
    """Runs ``call``, retrying outages (503, no answer) until the task's lease deadline."""
    delay = 0.05
    while True:
        try:
            return call()
        except (UnavailableError, TransportError):
            if now_ms() + delay * 1000 >= task.deadline_ms:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


def _error_text(e: BaseException) -> str:
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _finish(client: "Client", task: ClaimedTask, handler: Callable[[ClaimedTask], Any], stats: WorkStats) -> None:
    keeper = _LeaseKeeper(client, task)
    keeper.start()
    error: Optional[str] = None
    result: Any = None
    try:
        result = handler(task)
        if result is not None:
            json.dumps(result)
    except Exception as e:  # the handler's failure is the task's, reported below
        error = _error_text(e)
    finally:
        keeper.stop()
    try:
        if error is None:
            _until_deadline(task, lambda: client.complete(task, result=result))
            stats._add("completed")
        else:
            _until_deadline(task, lambda: client.fail(task, error))
            stats._add("failed")
    except (ConflictError, NotFoundError) as e:
        log.warning("task %s: finished after its lease was lost: %s", task.id, e)
        stats._add("lost")
    except (UnavailableError, TransportError) as e:
        log.warning("task %s: could not report it before its deadline: %s", task.id, e)
        stats._add("lost")


def run_workers(
    client: "Client",
    types: List[str],
    handler: Callable[[ClaimedTask], Any],
    concurrency: int,
    stop: threading.Event,
    lease_ms: Optional[int],
    wait_ms: int,
) -> WorkStats:
    """The loop of :meth:`Client.work`."""
    stats = WorkStats()
    fatal: List[BaseException] = []
    halt = threading.Event()

    def stopping() -> bool:
        return stop.is_set() or halt.is_set()

    def loop() -> None:
        delay = 0.05
        while not stopping():
            try:
                tasks = client.claim(types, max=1, wait_ms=wait_ms, lease_ms=lease_ms)
                delay = 0.05
            except (UnavailableError, TransportError) as e:
                log.info("claim failed, retrying in %.2f s: %s", delay, e)
                stop.wait(delay)
                delay = min(delay * 2, 2.0)
                continue
            except BaseException as e:  # 400, 401...: every worker stops, work() raises it
                fatal.append(e)
                halt.set()
                return
            for task in tasks:
                _finish(client, task, handler, stats)

    threads = [threading.Thread(target=loop, name=f"botfleet-worker-{i}", daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.2)
    except KeyboardInterrupt:
        stop.set()
        for t in threads:
            t.join()
        raise
    if fatal:
        raise fatal[0]
    return stats
