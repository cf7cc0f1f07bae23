"""The :class:`Client` of a botfleet daemon's HTTP API."""

from __future__ import annotations

import threading
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Union,
)

from ._transport import EventStream, Transport, path
from .errors import ConflictError, LockBusy, LockLost
from .inbox import AdminInbox, AdminMessage
from .locks import Lease, LockContext
from .streams import Reconnecting
from .tasks import ClaimedTask, ClaimedTasks, WorkStats, run_workers

JSON = Any


class Client:
    """A client of one ``botfleet run`` daemon.

    Args:
        url: the daemon's base URL, e.g. ``http://127.0.0.1:8080``.
        token: the bearer token (the daemon's ``api.token``), sent with every request;
            mutations answer 401 without it when the daemon has one.
        timeout: seconds to wait for an answer; a long poll (``wait_ms``) adds its wait.

    Every method raises a :class:`~botfleet_client.BotfleetError` subclass on an error
    answer (400 :class:`BadRequestError` with ``.field``, 401, 404, 409, 503) and
    :class:`TransportError` when no answer came. A client is safe to share between threads.
    """

    def __init__(self, url: str, token: Optional[str] = None, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._http = Transport(url, token, timeout)

    def close(self) -> None:
        """Closes the calling thread's kept-alive connection (others close when collected)."""
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _get(self, route: str, query: Optional[Mapping[str, Any]] = None, wait_ms: int = 0) -> JSON:
        return self._http.request("GET", route, query=query, wait_ms=wait_ms)[1]

    def _send(self, method: str, route: str, body: Any = None, wait_ms: int = 0, query: Optional[Mapping[str, Any]] = None) -> JSON:
        return self._http.request(method, route, body=body, wait_ms=wait_ms, query=query)[1]

    # ---------------------------------------------------------------- health

    def health(self) -> Dict[str, Any]:
        """``GET /health``: ``{"status": "ok", "mode": ...}`` (raises 503 when unhealthy)."""
        return self._get("/health")

    # ---------------------------------------------------------------- tasks

    def add_task(
        self,
        type: str,
        data: JSON = None,
        priority: Optional[int] = None,
        delay_ms: Optional[int] = None,
        max_attempts: Optional[int] = None,
        id: Optional[str] = None,
    ) -> str:
        """Queues a task of ``type`` (one of the daemon's ``scheduler.task_types``) with
        ``data`` (any JSON, default ``{}``); answers its id.

        ``priority`` orders the queue (higher first), ``delay_ms`` holds the task back that
        long, ``max_attempts`` bounds its retries before it is dead-lettered, ``id`` names it
        (default: the daemon picks one).
        """
        body: Dict[str, Any] = {"type": type, "data": {} if data is None else data}
        for key, value in (("priority", priority), ("delay_ms", delay_ms), ("max_attempts", max_attempts), ("id", id)):
            if value is not None:
                body[key] = value
        return self._send("POST", "/api/tasks", body)["id"]

    def get_task(self, id: str) -> Dict[str, Any]:
        """The task record ``{"id", "type", "data", "priority", "status", "attempts",
        "created_at", "updated_at", "run_at", "last_error"}``; :class:`NotFoundError` when
        there is none."""
        return self._get(path("api", "tasks", id))

    def claim(
        self,
        types: Union[str, Sequence[str]],
        max: int = 1,
        wait_ms: int = 0,
        lease_ms: Optional[int] = None,
        report: Optional[Sequence[Dict[str, Any]]] = None,
    ) -> ClaimedTasks:
        """Claims up to ``max`` tasks of ``types``, waiting up to ``wait_ms`` for one to
        arrive (an empty list when none did). Each comes with a lease that must be extended
        (:meth:`extend`) before its deadline, then completed or failed; a task whose lease
        runs out goes back to the queue. ``lease_ms`` overrides the daemon's visibility
        timeout for these tasks.

        ``report`` carries finished tasks (entries of :func:`~botfleet_client.completed` and
        :func:`~botfleet_client.failed`, at most 1,000), applied before the claim: the answer's
        ``reported`` has one outcome per entry, as :meth:`report` answers."""
        body: Dict[str, Any] = {"types": _types(types), "max": max, "wait_ms": wait_ms}
        if lease_ms is not None:
            body["lease_ms"] = lease_ms
        if report is not None:
            body["report"] = list(report)
        answer = self._send("POST", "/api/tasks/claim", body, wait_ms=wait_ms)
        return ClaimedTasks(
            (ClaimedTask.from_json(t, lease_ms) for t in answer["tasks"]),
            answer.get("reported"),
        )

    def report(self, entries: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
        """Reports finished tasks without claiming (entries of
        :func:`~botfleet_client.completed` and :func:`~botfleet_client.failed`, at most
        1,000), all in one request. Answers one outcome per entry, in order: ``{"id",
        "status"}`` as :meth:`complete` or :meth:`fail` would answer, or ``{"id", "error":
        {"status", "message", "field"}}`` with the status the single call would have raised
        (400, 404, 409; 503: send it again). One refused entry does not stop the others."""
        return self._send("POST", "/api/tasks/report", {"report": list(entries)})["reported"]

    def extend(self, task: Union[str, ClaimedTask], lease: Optional[str] = None, lease_ms: Optional[int] = None) -> int:
        """Extends a claimed task's lease; answers the new deadline (Unix ms).
        :class:`ConflictError` when the lease is no longer the task's."""
        id, lease = _task_and_lease(task, lease)
        body: Dict[str, Any] = {"lease": lease}
        if lease_ms is not None:
            body["lease_ms"] = lease_ms
        deadline = self._send("POST", path("api", "tasks", id, "extend"), body)["deadline_ms"]
        if isinstance(task, ClaimedTask):
            task.deadline_ms = deadline
        return deadline

    def complete(self, task: Union[str, ClaimedTask], lease: Optional[str] = None, result: JSON = None) -> None:
        """Marks a claimed task done, with an optional JSON ``result``."""
        id, lease = _task_and_lease(task, lease)
        body: Dict[str, Any] = {"lease": lease}
        if result is not None:
            body["result"] = result
        self._send("POST", path("api", "tasks", id, "complete"), body)

    def fail(self, task: Union[str, ClaimedTask], error: str, lease: Optional[str] = None) -> Dict[str, Any]:
        """Reports a claimed task failed with ``error``: answers ``{"status": "pending",
        "retry_at_ms": N}`` (retried later) or ``{"status": "failed"}`` (dead-lettered)."""
        id, lease = _task_and_lease(task, lease)
        return self._send("POST", path("api", "tasks", id, "fail"), {"lease": lease, "error": error})

    def work(
        self,
        types: Union[str, Sequence[str]],
        handler: Callable[[ClaimedTask], JSON],
        concurrency: int = 1,
        stop: Optional[threading.Event] = None,
        lease_ms: Optional[int] = None,
        wait_ms: int = 1000,
    ) -> WorkStats:
        """Runs ``handler(task)`` on the tasks of ``types`` in ``concurrency`` threads until
        ``stop`` is set (or KeyboardInterrupt), then answers the counts.

        Each thread claims one task at a time (long-polling ``wait_ms``), extends its lease
        every third of it while the handler runs, and completes it with the handler's return
        value as result, or fails it with the exception's text (``Type: message``). A task
        whose lease was lost meanwhile (``task.lost`` is set) is counted ``lost``; the daemon
        gives it to another worker. Outages (503, no answer) are retried with backoff; a 400
        or 401 stops every thread and is raised. After ``stop`` the tasks in hand finish.
        """
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        return run_workers(self, _types(types), handler, concurrency, stop or threading.Event(), lease_ms, wait_ms)

    def dead_letters(self, limit: Optional[int] = None) -> Dict[str, Any]:
        """The dead-lettered tasks: ``{"tasks": [task records], "total": N}``."""
        return self._get("/api/tasks/dead", {"limit": limit})

    def retry_dead(self, ids: Optional[Iterable[str]] = None, all: bool = False) -> int:
        """Queues dead-lettered tasks again (``ids``, or ``all=True``); answers how many."""
        if all:
            body: Dict[str, Any] = {"all": True}
        elif ids is not None:
            body = {"ids": list(ids)}
        else:
            raise ValueError("give ids or all=True")
        return self._send("POST", "/api/tasks/dead/retry", body)["retried"]

    def delete_dead(self, id: str) -> bool:
        """Deletes one dead-lettered task; :class:`NotFoundError` when there is none."""
        return bool(self._send("DELETE", path("api", "tasks", "dead", id))["deleted"])

    def delayed(self, limit: Optional[int] = None) -> Dict[str, Any]:
        """The delayed tasks: ``{"tasks": [task records], "total": N}``."""
        return self._get("/api/tasks/delayed", {"limit": limit})

    def promote(self, id: str) -> bool:
        """Makes a delayed task due now."""
        return bool(self._send("POST", path("api", "tasks", "delayed", id, "promote"))["promoted"])

    # ---------------------------------------------------------------- locks

    def acquire_lock(self, name: str, ttl_ms: int, wait_ms: int = 0) -> Lease:
        """Acquires lock ``name`` for ``ttl_ms``, waiting up to ``wait_ms``: answers the
        lease (token, fencing token, expiry). :class:`LockBusy` when it was held throughout.

        The daemon keeps no watchdog for HTTP holders: extend it (:meth:`extend_lock`) or
        lose it at its TTL. :meth:`lock` does both for a ``with`` block."""
        try:
            answer = self._send("POST", "/api/locks/acquire", {"name": name, "ttl_ms": ttl_ms, "wait_ms": wait_ms}, wait_ms=wait_ms)
        except ConflictError as e:
            raise LockBusy(name, e.message, e.body) from None
        return Lease(answer["name"], answer["token"], int(answer["fence"]), int(answer["expires_at_ms"]), ttl_ms)

    def extend_lock(self, lease: Lease, ttl_ms: Optional[int] = None) -> int:
        """Extends a held lock for ``ttl_ms`` (default its TTL); answers the new expiry (Unix
        ms). :class:`LockLost` when the token no longer holds it."""
        ttl = lease.ttl_ms if ttl_ms is None else ttl_ms
        try:
            answer = self._send("POST", "/api/locks/extend", {"name": lease.name, "token": lease.token, "ttl_ms": ttl})
        except ConflictError as e:
            raise LockLost(lease.name, e.message) from None
        lease.expires_at_ms = int(answer["expires_at_ms"])
        return lease.expires_at_ms

    def release_lock(self, lease: Lease) -> bool:
        """Releases a held lock: True, or False when the token no longer held it."""
        try:
            self._send("POST", "/api/locks/release", {"name": lease.name, "token": lease.token})
        except ConflictError:
            return False
        return True

    def held_locks(self) -> Dict[str, Any]:
        """The locks the daemon holds now, from its memory: ``{"total": N, "locks": [{"name",
        "holder" ("guard", "local" or "lease"), "fence", "expires_at_ms", "ttl_left_ms"}]}``
        (at most 200 listed; tokens are never shown)."""
        return self._get("/api/locks/held")

    def lock(self, name: str, ttl_ms: int, wait_ms: int = 0) -> LockContext:
        """A ``with`` block holding lock ``name``; it yields the fencing token (an ``int``
        with ``.lost`` and ``.check()``)::

            with client.lock("bet-lock:user123-agent456", ttl_ms=30_000, wait_ms=2_000) as fence:
                place_bet(fence)           # pass the fence to what you protect

        A background thread extends the lock every third of ``ttl_ms``; the block's end
        releases it. Raises :class:`LockBusy` on entry when it was not had within
        ``wait_ms``, and :class:`LockLost` on exit when it stopped being ours meanwhile (the
        daemon refused an extension, or none succeeded within two thirds of the TTL).
        """
        return LockContext(self, name, ttl_ms, wait_ms)

    # ---------------------------------------------------------------- shared data

    def shared_data(self, reader: Optional[str] = None) -> Dict[str, Any]:
        """The shared snapshot (seed 000) as the daemon's reader answers it: ``{"snapshot",
        "timestamp", "age_ms", "origin", "stale", ...}``; ``snapshot`` is the seed's object
        (``{"timestamp", "game_data", "processed_data"}``) or ``None``."""
        return self._get("/api/shared-data", {"reader": reader})

    def shared_data_stream(
        self,
        reader: Optional[str] = None,
        reconnect: bool = True,
        read_timeout: Optional[float] = 60.0,
    ) -> Iterator[Dict[str, Any]]:
        """Each new round of the shared data, once, in order (as :meth:`shared_data` answers
        it), first the round the daemon holds now. With ``reconnect`` a broken stream is
        opened again and rounds already seen are skipped. Close the iterator to stop."""
        def open_stream() -> EventStream:
            return self._http.stream("/api/shared-data/stream", {"reader": reader}, read_timeout)

        def key(event: Any) -> Any:
            return event.data.get("timestamp") if isinstance(event.data, dict) else None

        return Reconnecting(open_stream, "snapshot", key if reconnect else None, reconnect)

    # ---------------------------------------------------------------- admin messages

    def admin_send(self, pid: int, message: str) -> str:
        """Sends ``message`` to the bot of process ``pid`` (seed 004's ``admin:queue:PID``
        and ``admin:bot:PID``); answers the message id."""
        answer = self._send("POST", "/api/admin/send", {"pid": pid, "message": message})
        return str(answer.get("id", ""))

    def admin_receive(self, pid: int, max: int = 100, wait_ms: int = 0) -> List[AdminMessage]:
        """The oldest ``max`` messages of ``pid``'s queue, waiting up to ``wait_ms`` for one;
        they stay queued until acknowledged (:meth:`admin_ack`). Empty while the daemon is
        off Redis (the queue cannot be read then)."""
        return self._admin_read(pid, max, wait_ms)[0]

    def _admin_read(self, pid: int, max: int, wait_ms: int) -> "tuple[List[AdminMessage], bool]":
        answer = self._get(path("api", "admin", "inbox", pid), {"max": max, "wait_ms": wait_ms}, wait_ms=wait_ms)
        messages = [AdminMessage.from_json(m) for m in answer["messages"]]
        return messages, bool(answer.get("stale", False))

    def admin_ack(self, pid: int, ids: Iterable[str]) -> int:
        """Removes the messages of ``ids`` from ``pid``'s queue; answers how many."""
        return int(self._send("POST", path("api", "admin", "inbox", pid, "ack"), {"ids": list(ids)})["acked"])

    def admin_inbox(
        self,
        pid: int,
        wait_ms: int = 1000,
        batch: int = 100,
        stop: Optional[threading.Event] = None,
    ) -> AdminInbox:
        """The messages of ``pid``, one by one, in order, for ever (or until ``stop`` is set
        or the inbox is closed)::

            for message in client.admin_inbox(os.getpid()):
                handle(message.message)      # acknowledged when the next one is asked for

        A message is acknowledged when the next one is requested, or at once with
        :meth:`AdminInbox.ack`. Delivery is at least once: a consumer that dies before the
        acknowledgement gets the message again, with the same ``id`` (the idempotence key);
        within one inbox a repeated id is skipped. Outages are waited out.
        """
        return AdminInbox(self, pid, wait_ms, batch, stop)

    # ---------------------------------------------------------------- identities

    def put_identity(self, room: str, participant: str, identity: Mapping[str, Any]) -> None:
        """Stores ``identity`` (a JSON object) of ``participant`` in ``room``
        (``identity:ROOM:PARTICIPANT``, seed 004)."""
        self._send("PUT", "/api/identities", {"room": room, "participant": participant, "identity": dict(identity)})

    def get_identity(self, room: str, participant: str) -> Dict[str, Any]:
        """The identity of ``participant`` in ``room``; :class:`NotFoundError` when none."""
        return self._get("/api/identities", {"room": room, "participant": participant})

    def delete_identity(self, room: str, participant: str) -> bool:
        """Deletes an identity: whether there was one."""
        return bool(self._send("DELETE", "/api/identities", query={"room": room, "participant": participant})["deleted"])

    def room_identities(self, room: str) -> Dict[str, Dict[str, Any]]:
        """Every identity of ``room``, by participant."""
        return dict(self._get("/api/identities", {"room": room})["identities"])

    # ---------------------------------------------------------------- heartbeats, peers

    def heartbeat(
        self,
        pid: int,
        room_url: Optional[str] = None,
        participants: Optional[Sequence[str]] = None,
        status: Optional[str] = None,
    ) -> Dict[str, Any]:
        """Registers (or refreshes) the heartbeat of process ``pid`` (seed 004's
        ``heartbeat:PID``, expiring after the daemon's TTL); answers the record."""
        body: Dict[str, Any] = {}
        if room_url is not None:
            body["room_url"] = room_url
        if participants is not None:
            body["participants"] = list(participants)
        if status is not None:
            body["status"] = status
        return self._send("PUT", path("api", "heartbeats", pid), body)

    def remove_heartbeat(self, pid: int) -> bool:
        """Removes the heartbeat of ``pid``: whether there was one."""
        return bool(self._send("DELETE", path("api", "heartbeats", pid))["deleted"])

    def peers(self) -> List[Dict[str, Any]]:
        """The processes with a heartbeat, as the daemon's peer monitor sees them."""
        return list(self._get("/api/peers")["peers"])

    def peers_stream(self, read_timeout: Optional[float] = 60.0, reconnect: bool = False) -> Iterator[Dict[str, Any]]:
        """Peer events (joined, stale, zombie, left) as they happen. Close it to stop."""
        return Reconnecting(lambda: self._http.stream("/api/peers/stream", None, read_timeout), "peer", None, reconnect)

    # ---------------------------------------------------------------- game sessions

    def put_game_session(self, user: str, agent: str, session: Mapping[str, Any]) -> JSON:
        """Creates or replaces the game session of ``user`` and ``agent``
        (``gameSession:USER-AGENT``, seed 002; camelCase fields)."""
        return self._send("PUT", path("api", "game-sessions", user, agent), dict(session))

    def get_game_session(self, user: str, agent: str) -> Dict[str, Any]:
        """The game session; :class:`NotFoundError` when there is none."""
        return self._get(path("api", "game-sessions", user, agent))

    def update_game_session(
        self,
        user: str,
        agent: str,
        set: Optional[Mapping[str, Any]] = None,
        increment: Optional[Mapping[str, Any]] = None,
    ) -> Dict[str, Any]:
        """Changes a game session atomically against concurrent updates: the fields of
        ``set`` (camelCase) take their values, those of ``increment`` (``nonce``,
        ``currentStep``, ``winAmount``, ``betAmount``) grow by theirs. Use ``increment`` for
        counters: a ``set`` computed from an earlier read overwrites concurrent changes.
        Answers the new session."""
        body: Dict[str, Any] = {}
        if set:
            body["set"] = dict(set)
        if increment:
            body["increment"] = dict(increment)
        return self._send("PATCH", path("api", "game-sessions", user, agent), body)

    def delete_game_session(self, user: str, agent: str) -> bool:
        """Deletes a game session: whether there was one."""
        return bool(self._send("DELETE", path("api", "game-sessions", user, agent))["deleted"])

    # ---------------------------------------------------------------- fairness

    def fairness_start(self, user: str, agent: str, user_seed: str) -> Dict[str, Any]:
        """Starts provably fair play with the player's seed: the fairness record
        (``hashedServerSeed`` committed before any round, ``nonce``)."""
        return self._send("POST", path("api", "fairness", user, agent, "start"), {"user_seed": user_seed})

    def fairness_get(self, user: str, agent: str) -> Dict[str, Any]:
        """The fairness record; :class:`NotFoundError` when there is none."""
        return self._get(path("api", "fairness", user, agent))

    def fairness_round(self, user: str, agent: str, difficulty: str) -> Dict[str, Any]:
        """The hazards of the round in play at ``difficulty``: ``{"difficulty", "hazards",
        "nonce", "userSeed", "hashedServerSeed"}``."""
        return self._get(path("api", "fairness", user, agent, "round"), {"difficulty": difficulty})

    def fairness_settle(self, user: str, agent: str, next_user_seed: Optional[str] = None) -> Dict[str, Any]:
        """Settles the round: reveals its server seed (``serverSeed``, ``nonce``...) and
        rotates to a new one (``next``)."""
        body: Dict[str, Any] = {}
        if next_user_seed is not None:
            body["next_user_seed"] = next_user_seed
        return self._send("POST", path("api", "fairness", user, agent, "settle"), body)

    def fairness_verify(self, server_seed: str, client_seed: str, nonce: int, difficulty: str) -> List[int]:
        """Recomputes the hazards of a settled round from its revealed seed."""
        body = {"server_seed": server_seed, "client_seed": client_seed, "nonce": nonce, "difficulty": difficulty}
        return [int(h) for h in self._send("POST", "/api/fairness/verify", body)["hazards"]]


def _types(types: Union[str, Sequence[str]]) -> List[str]:
    return [types] if isinstance(types, str) else list(types)


def _task_and_lease(task: Union[str, ClaimedTask], lease: Optional[str]) -> "tuple[str, str]":
    if isinstance(task, ClaimedTask):
        return task.id, lease or task.lease
    if lease is None:
        raise ValueError("give the task's lease (or the ClaimedTask itself)")
    return task, lease


__all__ = ["Client"]
