"""The rest of the API through the Python client: admin messages, identities, heartbeats and
peers, game sessions, provably fair rounds, and errors mapped to their types."""

from __future__ import annotations

import threading
import time
import unittest
import uuid
from typing import Any, List

from _support import client, poll, redis
from botfleet_client import BadRequestError, BotfleetError, NotFoundError, UnauthorizedError


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class AdminTest(unittest.TestCase):
    def test_inbox_delivers_in_order_and_acknowledges(self) -> None:
        c = client()
        pid = 21000 + uuid.uuid4().int % 1000
        sent = [c.admin_send(pid, f"hello {i}") for i in range(5)]
        self.assertEqual(len(set(sent)), 5)
        peeked = c.admin_receive(pid, max=10)
        self.assertEqual([m.message for m in peeked], [f"hello {i}" for i in range(5)])
        self.assertEqual([m.id for m in peeked], sent)
        # A read removes nothing.
        self.assertEqual([m.id for m in c.admin_receive(pid, max=10)], sent)

        inbox = c.admin_inbox(pid, wait_ms=200)
        got = [next(inbox).message for _ in range(3)]
        self.assertEqual(got, ["hello 0", "hello 1", "hello 2"])
        # The first two are acknowledged (the third is in hand).
        self.assertEqual([m.message for m in c.admin_receive(pid)], ["hello 2", "hello 3", "hello 4"])
        inbox.ack()
        inbox.close()
        self.assertEqual([m.message for m in c.admin_receive(pid)], ["hello 3", "hello 4"])
        r = redis()
        self.assertEqual(r.call("LLEN", f"admin:queue:{pid}"), 2)
        r.close()

        # A new consumer gets what was never acknowledged, and waits for more.
        with c.admin_inbox(pid, wait_ms=500) as again:
            self.assertEqual(next(again).message, "hello 3")
            self.assertEqual(next(again).message, "hello 4")
            later: List[Any] = []
            t = threading.Thread(target=lambda: later.append(next(again)), daemon=True)
            t.start()
            time.sleep(0.2)
            c.admin_send(pid, "late")
            t.join(10)
            self.assertEqual([m.message for m in later], ["late"])
        self.assertEqual(c.admin_receive(pid), [])

    def test_bad_pid_names_the_field(self) -> None:
        c = client()
        with self.assertRaises(BadRequestError) as e:
            c.admin_send(0, "hi")
        self.assertEqual(e.exception.field, "pid")
        with self.assertRaises(BadRequestError) as e:
            c.admin_receive(-5)
        self.assertEqual(e.exception.field, "pid")


class IdentityTest(unittest.TestCase):
    def test_round_trip_and_room_listing(self) -> None:
        c = client()
        room = f"https://rooms.example/{unique('room')}"
        c.put_identity(room, "user1", {"name": "John", "lang": "en"})
        c.put_identity(room, "user2", {"name": "Mai"})
        self.assertEqual(c.get_identity(room, "user1"), {"name": "John", "lang": "en"})
        self.assertEqual(c.room_identities(room), {"user1": {"name": "John", "lang": "en"}, "user2": {"name": "Mai"}})
        r = redis()
        self.assertIsNotNone(r.call("GET", f"identity:{room}:user1"), "the seed's key must hold it")
        r.close()
        self.assertTrue(c.delete_identity(room, "user1"))
        self.assertFalse(c.delete_identity(room, "user1"))
        with self.assertRaises(NotFoundError):
            c.get_identity(room, "user1")
        with self.assertRaises(BadRequestError) as e:
            c.put_identity("", "user1", {})
        self.assertEqual(e.exception.field, "room")


class HeartbeatTest(unittest.TestCase):
    def test_a_heartbeat_makes_a_peer_until_removed(self) -> None:
        c = client()
        pid = 22000 + uuid.uuid4().int % 1000
        record = c.heartbeat(pid, room_url="https://room.url", participants=["user1", "user2"], status="running")
        self.assertIsInstance(record, dict)
        r = redis()
        self.assertEqual(r.call("EXISTS", f"heartbeat:{pid}"), 1, "the seed's key must hold it")
        self.assertGreater(r.call("TTL", f"heartbeat:{pid}"), 0)
        r.close()
        poll(f"pid {pid} among the peers", lambda: any(str(p.get("pid")) == str(pid) for p in c.peers()))
        self.assertTrue(c.remove_heartbeat(pid))
        self.assertFalse(c.remove_heartbeat(pid))

    def test_the_peers_stream_tells_of_a_new_peer(self) -> None:
        c = client()
        pid = 23000 + uuid.uuid4().int % 1000
        stream = c.peers_stream()
        events: List[Any] = []

        def follow() -> None:
            for event in stream:
                events.append(event)

        t = threading.Thread(target=follow, daemon=True)
        t.start()
        c.heartbeat(pid, room_url="https://room.url", participants=["a"])
        poll(f"a peer event of pid {pid}", lambda: any(str(pid) in repr(e) for e in events), timeout=20)
        stream.close()
        t.join(5)
        self.assertFalse(t.is_alive())
        c.remove_heartbeat(pid)


class GameTest(unittest.TestCase):
    def test_game_session_round_trip(self) -> None:
        c = client()
        user, agent = unique("user"), "agent456"
        session = {
            "userId": user,
            "agentId": agent,
            "currency": "INR",
            "difficulty": "EASY",
            "betAmount": 10.0,
            "winAmount": 0.0,
            "isActive": True,
            "currentStep": 0,
            "coefficients": ["1.01", "1.03"],
        }
        c.put_game_session(user, agent, session)
        got = c.get_game_session(user, agent)
        self.assertEqual((got["userId"], got["currency"], got["isActive"]), (user, "INR", True))
        updated = c.update_game_session(user, agent, {"currentStep": 1, "winAmount": 10.1})
        self.assertEqual((updated["currentStep"], updated["winAmount"]), (1, 10.1))
        self.assertEqual(c.get_game_session(user, agent)["currentStep"], 1)
        counted = c.update_game_session(user, agent, increment={"currentStep": 2, "betAmount": -2.5})
        self.assertEqual((counted["currentStep"], counted["betAmount"]), (3, 7.5))
        c.update_game_session(user, agent, set={"currentStep": 1})
        with self.assertRaises(BadRequestError) as bad:
            c.update_game_session(user, agent, set={"noSuchField": 1})
        self.assertEqual(bad.exception.field, "set.noSuchField")
        self.assertTrue(c.delete_game_session(user, agent))
        self.assertFalse(c.delete_game_session(user, agent))
        with self.assertRaises(NotFoundError):
            c.get_game_session(user, agent)
        with self.assertRaises(NotFoundError):
            c.update_game_session(user, agent, {"currentStep": 2})

    def test_a_fair_round_settles_and_verifies(self) -> None:
        c = client()
        user, agent = unique("user"), "agent456"
        record = c.fairness_start(user, agent, "my lucky seed")
        self.assertEqual(record["userSeed"], "my lucky seed")
        committed = record["hashedServerSeed"]
        played = c.fairness_round(user, agent, "EASY")
        self.assertEqual(played["hashedServerSeed"], committed)
        settled = c.fairness_settle(user, agent, next_user_seed="next seed")
        self.assertEqual(settled["hashedServerSeed"], committed)
        hazards = c.fairness_verify(settled["serverSeed"], settled["userSeed"], settled["nonce"], "EASY")
        self.assertEqual(hazards, played["hazards"])
        self.assertNotEqual(c.fairness_get(user, agent)["hashedServerSeed"], committed)
        with self.assertRaises(NotFoundError):
            c.fairness_get(unique("nobody"), agent)
        with self.assertRaises(BadRequestError) as e:
            c.fairness_round(user, agent, "NOPE")
        self.assertEqual(e.exception.field, "difficulty")


class ErrorTest(unittest.TestCase):
    def test_errors_carry_status_and_field(self) -> None:
        c = client()
        with self.assertRaises(UnauthorizedError) as e:
            client(token=None).put_identity("room", "p", {})
        self.assertEqual((e.exception.status, e.exception.field), (401, None))
        self.assertIsInstance(e.exception, BotfleetError)
        with self.assertRaises(BadRequestError) as bad:
            c.heartbeat(0)
        self.assertEqual((bad.exception.status, bad.exception.field), (400, "pid"))
        self.assertIn("pid", str(bad.exception))


if __name__ == "__main__":
    unittest.main()
