"""Shared data (seed 000) through the daemon: a seed English bot writes the shared key with
SET + EXPIRE into a daemon that has no source of its own; the client sees every round within
the bound the daemon states (``shared_data.watch_interval_ms`` plus one GET), and the stream
delivers each round once, in order."""

from __future__ import annotations

import threading
import time
import unittest
from typing import List

import english_bot
from _support import client, env, poll

ROUNDS = 8
# What the test adds to the daemon's bound: its own polling, one GET, a loaded machine.
SLACK_MS = 750


class SharedDataTest(unittest.TestCase):
    def test_each_round_of_a_seed_bot_is_seen_in_time_and_streamed_once(self) -> None:
        watch_ms = int(env("BOTFLEET_SHARED_DATA_WATCH_MS"))
        bound_ms = watch_ms + SLACK_MS
        c = client()
        before = c.shared_data()
        self.assertIsNone(before["snapshot"], before)

        streamed: List[int] = []
        issues: List[int] = []
        stream = c.shared_data_stream()

        def follow() -> None:
            for reading in stream:
                streamed.append(reading["timestamp"])
                issues.append(reading["snapshot"]["processed_data"]["issue_number"])

        follower = threading.Thread(target=follow, daemon=True)
        follower.start()

        written: List[int] = []
        latencies: List[float] = []
        for i in range(ROUNDS):
            issue = 12345 + i
            ts = english_bot.update_redis(english_bot.api_round(issue))
            while written and ts <= written[-1]:
                # Two rounds in one millisecond would be one round to any reader.
                time.sleep(0.002)
                ts = english_bot.update_redis(english_bot.api_round(issue))
            written.append(ts)
            started = time.monotonic()
            reading = poll(
                f"round {issue} (timestamp {ts}) through GET /api/shared-data",
                lambda: (lambda r: r if r["timestamp"] == ts else None)(c.shared_data()),
                timeout=10.0,
            )
            latencies.append((time.monotonic() - started) * 1000)
            self.assertEqual(reading["snapshot"]["processed_data"]["issue_number"], issue)
            self.assertEqual(reading["snapshot"]["game_data"], english_bot.api_round(issue))
            self.assertFalse(reading["stale"], reading)
            self.assertLess(reading["age_ms"], 10_000)

        poll("the stream to deliver the last round", lambda: streamed and streamed[-1] == written[-1])
        stream.close()
        follower.join(5)
        self.assertFalse(follower.is_alive(), "closing the stream did not end its iteration")
        print(f"rounds seen after (ms): {[round(l) for l in latencies]}; bound {bound_ms} ms")
        self.assertEqual(streamed, written, "the stream must deliver each round once, in order")
        self.assertEqual(issues, [12345 + i for i in range(ROUNDS)])
        slow = [(i, round(l)) for i, l in enumerate(latencies) if l > bound_ms]
        self.assertEqual(slow, [], f"rounds seen later than {bound_ms} ms")


if __name__ == "__main__":
    unittest.main()
