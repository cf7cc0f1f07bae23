"""Tasks through the daemon: ``work()`` runs each task once, leases extended while a handler
runs, failures retried then dead-lettered, dead letters retried and deleted, stale leases
refused, bad input named."""

from __future__ import annotations

import threading
import time
import unittest
import uuid
from collections import Counter
from typing import Any, List

from _support import client, poll
from botfleet_client import (
    BadRequestError,
    ClaimedTask,
    ConflictError,
    NotFoundError,
    UnauthorizedError,
    completed,
    failed,
)

TASKS = 200


def run_in_thread(target: Any) -> threading.Thread:
    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t


class TaskTest(unittest.TestCase):
    def test_work_runs_each_of_200_tasks_once(self) -> None:
        c = client()
        batch = uuid.uuid4().hex
        ids = [c.add_task("job_check", {"batch": batch, "n": i}, priority=5) for i in range(TASKS)]
        self.assertEqual(len(set(ids)), TASKS)
        seen: List[int] = []
        guard = threading.Lock()
        stop = threading.Event()

        def handler(task: ClaimedTask) -> Any:
            self.assertEqual(task.type, "job_check")
            self.assertEqual(task.data["batch"], batch)
            with guard:
                seen.append(task.data["n"])
                if len(seen) >= TASKS:
                    stop.set()
            return {"checked": task.data["n"]}

        result: List[Any] = []
        worker = run_in_thread(lambda: result.append(c.work("job_check", handler, concurrency=4, stop=stop, wait_ms=200)))
        worker.join(120)
        self.assertFalse(worker.is_alive(), f"work() did not stop; {len(seen)} tasks seen")
        stats = result[0]
        duplicates = [n for n, k in Counter(seen).items() if k > 1]
        self.assertEqual(duplicates, [], "tasks run more than once")
        self.assertEqual(sorted(seen), list(range(TASKS)))
        self.assertEqual((stats.completed, stats.failed, stats.lost), (TASKS, 0, 0))
        for id in ids[:: TASKS // 10]:
            record = c.get_task(id)
            self.assertEqual(record["status"], "completed", record)
            self.assertEqual(record["attempts"], 1, record)

    def test_the_lease_is_extended_while_the_handler_runs(self) -> None:
        c = client()
        id = c.add_task("navigation", {"url": "/jobs"})
        stop = threading.Event()
        attempts: List[int] = []
        others: List[Any] = []

        def handler(task: ClaimedTask) -> None:
            attempts.append(task.attempt)
            # Run for four leases; meanwhile nobody else may get the task.
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                others.extend(c.claim("navigation", max=10))
                time.sleep(0.1)
            self.assertFalse(task.lost.is_set())
            stop.set()

        stats = c.work("navigation", handler, stop=stop, lease_ms=500, wait_ms=200)
        self.assertEqual(attempts, [1])
        self.assertEqual(others, [], "the task was handed out again while its handler ran")
        self.assertEqual((stats.completed, stats.lost), (1, 0))
        self.assertEqual(c.get_task(id)["status"], "completed")

    def test_failures_retry_then_dead_letter_and_dead_letters_come_back(self) -> None:
        c = client()
        id = c.add_task("screenshot", {"page": "jobs"}, max_attempts=2)
        stop = threading.Event()
        attempts: List[int] = []

        def failing(task: ClaimedTask) -> None:
            attempts.append(task.attempt)
            if len(attempts) >= 2:
                stop.set()
            raise ValueError(f"no screen on attempt {task.attempt}")

        stats = c.work("screenshot", failing, stop=stop, wait_ms=200)
        self.assertEqual(attempts, [1, 2])
        self.assertEqual(stats.failed, 2)
        record = c.get_task(id)
        self.assertEqual(record["status"], "failed", record)
        self.assertIn("ValueError: no screen on attempt 2", record["last_error"])
        dead = c.dead_letters()
        self.assertIn(id, [t["id"] for t in dead["tasks"]])
        self.assertGreaterEqual(dead["total"], 1)

        self.assertEqual(c.retry_dead([id]), 1)
        claimed = poll("the retried task", lambda: c.claim("screenshot", wait_ms=500))
        self.assertEqual(claimed[0].id, id)
        c.complete(claimed[0], result={"ok": True})
        self.assertEqual(c.get_task(id)["status"], "completed")
        with self.assertRaises(NotFoundError):
            c.delete_dead(id)

        second = c.add_task("screenshot", {}, max_attempts=1)
        task = poll("the second task", lambda: c.claim("screenshot", wait_ms=500))[0]
        self.assertEqual(task.id, second)
        self.assertEqual(c.fail(task, "broken")["status"], "failed")
        self.assertTrue(c.delete_dead(second))
        self.assertNotIn(second, [t["id"] for t in c.dead_letters()["tasks"]])

    def test_a_stale_lease_is_refused(self) -> None:
        c = client()
        c.add_task("job_reject", {"job": 7})
        task = poll("the task", lambda: c.claim("job_reject", wait_ms=500))[0]
        with self.assertRaises(ConflictError) as e:
            c.complete(task.id, lease=task.lease + "x")
        self.assertEqual(e.exception.status, 409)
        before = task.deadline_ms
        deadline = c.extend(task, lease_ms=5_000)
        self.assertEqual(task.deadline_ms, deadline)
        self.assertGreaterEqual(deadline, int(time.time() * 1000) + 4_000, f"extended from {before}")
        c.complete(task)
        with self.assertRaises(ConflictError):
            c.complete(task)

    def test_a_long_poll_returns_when_a_task_arrives(self) -> None:
        c = client()
        other = client()
        got: List[Any] = []
        started = time.monotonic()
        t = run_in_thread(lambda: got.extend(c.claim("job_accept", wait_ms=10_000)))
        time.sleep(0.3)
        id = other.add_task("job_accept", {"job": 1})
        t.join(15)
        self.assertEqual([task.id for task in got], [id])
        self.assertLess(time.monotonic() - started, 5, "the long poll waited past the task's arrival")
        c.complete(got[0])

    def test_a_claim_carries_reports_and_report_sends_them_alone(self) -> None:
        c = client()
        first = c.add_task("login", {"n": 1}, priority=100)
        second = c.add_task("login", {"n": 2}, priority=100, max_attempts=1)
        tasks = c.claim("login", max=2, wait_ms=1000)
        self.assertEqual(sorted(t.id for t in tasks), sorted([first, second]))
        self.assertEqual(tasks.reported, [])
        by_id = {t.id: t for t in tasks}
        third = c.add_task("login", {"n": 3}, priority=100)
        claimed = c.claim(
            "login",
            wait_ms=1000,
            report=[
                completed(by_id[first], result={"ok": True}),
                failed(by_id[second], "boom"),
                {"id": first, "lease": by_id[first].lease},
                {"id": "no-such-task", "lease": "0" * 32},
            ],
        )
        self.assertEqual([t.id for t in claimed], [third])
        self.assertEqual(claimed.reported[0], {"id": first, "status": "completed"})
        self.assertEqual(claimed.reported[1], {"id": second, "status": "failed", "retry_at_ms": None})
        self.assertEqual(claimed.reported[2]["error"]["status"], 409, claimed.reported)
        self.assertEqual(claimed.reported[3]["error"]["status"], 404, claimed.reported)
        self.assertEqual(c.get_task(first)["status"], "completed")
        # Alone, without a claim; a bad entry is refused by itself.
        outcomes = c.report([{"id": third}, completed(claimed[0])])
        self.assertEqual(outcomes[0]["error"]["status"], 400, outcomes)
        self.assertEqual(outcomes[0]["error"]["field"], "report[0]", outcomes)
        self.assertEqual(outcomes[1], {"id": third, "status": "completed"})
        self.assertEqual(c.get_task(third)["status"], "completed")
        with self.assertRaises(BadRequestError) as e:
            c.report([{"id": "x", "lease": "l"}] * 1001)
        self.assertEqual(e.exception.field, "report")
        self.assertTrue(c.delete_dead(second))

    def test_delayed_tasks_are_listed_and_promoted(self) -> None:
        c = client()
        id = c.add_task("login", {"username": "user@example.com"}, priority=10, delay_ms=600_000)
        self.assertIn(id, [t["id"] for t in c.delayed()["tasks"]])
        self.assertEqual(c.claim("login"), [])
        self.assertTrue(c.promote(id))
        task = poll("the promoted task", lambda: c.claim("login", wait_ms=500))[0]
        self.assertEqual((task.id, task.priority, task.data), (id, 10, {"username": "user@example.com"}))
        c.complete(task)

    def test_bad_input_is_refused_naming_the_field(self) -> None:
        c = client()
        with self.assertRaises(BadRequestError) as e:
            c.add_task("no_such_type", {})
        self.assertEqual((e.exception.status, e.exception.field), (400, "type"))
        self.assertIn("job_check", e.exception.message, "the error should name the allowed types")
        with self.assertRaises(BadRequestError) as e:
            c.add_task("login", {}, delay_ms=-1)
        self.assertEqual(e.exception.field, "delay_ms")
        with self.assertRaises(BadRequestError) as e:
            c.claim([], max=1)
        self.assertEqual(e.exception.field, "types")
        with self.assertRaises(NotFoundError) as nf:
            c.get_task("no-such-task-" + uuid.uuid4().hex)
        self.assertEqual(nf.exception.status, 404)

    def test_mutations_need_the_token(self) -> None:
        anonymous = client(token=None)
        with self.assertRaises(UnauthorizedError) as e:
            anonymous.add_task("login", {})
        self.assertEqual(e.exception.status, 401)
        with self.assertRaises(UnauthorizedError):
            client(token="wrong-token").claim("login")


if __name__ == "__main__":
    unittest.main()
