"""Locks through the daemon: exclusion across two Python processes, busy and lost locks, a
``with`` block held past its TTL, and exclusion with the seeds' ``SET NX`` both ways."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
import unittest
import uuid

from _support import HERE, client, env, lines, poll, python, redis
from botfleet_client import LockBusy, LockLost

ROUNDS = 40


def unique(prefix: str) -> str:
    return f"{prefix}:{uuid.uuid4().hex[:8]}"


class LockTest(unittest.TestCase):
    def test_lock_excludes_across_two_processes(self) -> None:
        env("BOTFLEET_URL")
        name = unique("bet-lock:user123-agent456")
        with tempfile.TemporaryDirectory() as tmp:
            counter = os.path.join(tmp, "counter")
            log = os.path.join(tmp, "log")
            with open(counter, "w") as f:
                f.write("0")
            workers = [
                subprocess.Popen([python(), os.path.join(HERE, "lock_worker.py"), name, str(ROUNDS), counter, log])
                for _ in range(2)
            ]
            codes = [w.wait(timeout=120) for w in workers]
            self.assertEqual(codes, [0, 0])
            with open(counter) as f:
                self.assertEqual(int(f.read()), 2 * ROUNDS, "an update was lost: the lock did not exclude")
            entries = [line.split() for line in lines(log)]
        self.assertEqual(len(entries), 2 * ROUNDS)
        fences = [int(fence) for fence, _ in entries]
        self.assertEqual(fences, sorted(set(fences)), "fencing tokens must strictly increase")
        self.assertEqual({pid for _, pid in entries}, {str(w.pid) for w in workers})

    def test_a_held_lock_is_busy_for_others_within_their_wait(self) -> None:
        c = client()
        name = unique("wallet-retry-scheduler-lock")
        with c.lock(name, ttl_ms=5_000) as fence:
            self.assertGreater(int(fence), 0)
            with self.assertRaises(LockBusy) as busy:
                c.acquire_lock(name, ttl_ms=1_000)
            self.assertEqual(busy.exception.status, 409)
            started = time.monotonic()
            with self.assertRaises(LockBusy):
                c.acquire_lock(name, ttl_ms=1_000, wait_ms=300)
            self.assertGreaterEqual(time.monotonic() - started, 0.25)
        # Released at the block's end: free at once.
        lease = c.acquire_lock(name, ttl_ms=1_000)
        self.assertGreater(lease.fence, int(fence))
        held = [h for h in c.held_locks()["locks"] if h["name"] == name]
        self.assertEqual([(h["holder"], h["fence"]) for h in held], [("lease", lease.fence)])
        self.assertNotIn("token", held[0])
        self.assertTrue(c.release_lock(lease))
        self.assertEqual([h for h in c.held_locks()["locks"] if h["name"] == name], [])
        self.assertFalse(c.release_lock(lease), "a second release must say the token no longer holds it")

    def test_the_block_keeps_the_lock_past_its_ttl(self) -> None:
        c = client()
        name = unique("retry-job-lock")
        with c.lock(name, ttl_ms=600) as fence:
            # Hold it for three TTLs: only the extensions keep it ours.
            deadline = time.monotonic() + 1.8
            while time.monotonic() < deadline:
                with self.assertRaises(LockBusy):
                    c.acquire_lock(name, ttl_ms=600)
                time.sleep(0.1)
            self.assertFalse(fence.lost)
            fence.check()

    def test_a_lock_taken_away_raises_lock_lost_at_the_end_of_the_block(self) -> None:
        c = client()
        name = unique("bet-cleanup-lock")
        r = redis()
        with self.assertRaises(LockLost) as lost:
            with c.lock(name, ttl_ms=600) as fence:
                self.assertEqual(r.call("DEL", name), 1)
                poll("the keeper to notice the lock is gone", lambda: fence.lost, timeout=5)
                with self.assertRaises(LockLost):
                    fence.check()
        self.assertEqual(lost.exception.name, name)
        r.close()

    def test_excludes_the_seeds_set_nx_both_ways(self) -> None:
        c = client()
        r = redis()
        name = unique("bet-lock:seed")
        with c.lock(name, ttl_ms=5_000):
            self.assertIsNone(r.call("SET", name, "1", "EX", "30", "NX"), "seed SET NX must fail while held")
        self.assertEqual(r.call("SET", name, "1", "EX", "30", "NX"), "OK")
        with self.assertRaises(LockBusy):
            with c.lock(name, ttl_ms=1_000, wait_ms=100):
                self.fail("acquired a lock a seed client holds")
        r.call("DEL", name)
        r.close()


if __name__ == "__main__":
    unittest.main()
