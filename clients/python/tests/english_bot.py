"""Seed 000's English bot, reduced to the part that feeds the other bots: each round it
writes ``fivem_red_green_shared_data`` with a plain ``SET`` then ``EXPIRE 300``, exactly as
the seed's ``update_redis`` does (no botfleet involved, no notice sent). Redis is spoken to
over a raw socket so that the test needs no redis-py.

Run alone it plays rounds for ever: ``REDIS_URL=redis://127.0.0.1:6379 python english_bot.py``.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, Optional

from _support import Resp

SHARED_KEY = "fivem_red_green_shared_data"

_connection: Optional[Resp] = None


def get_redis_connection() -> Optional[Resp]:
    """The bot's one connection to Redis (``REDIS_URL``), opened on first use."""
    global _connection
    if _connection is None:
        _connection = Resp(os.environ.get("REDIS_URL") or os.environ["BOTFLEET_REDIS_URL"])
    return _connection


def api_round(issue: int) -> Dict[str, Any]:
    """What the game's API answers for round ``issue`` (the fields the seed uses)."""
    value = f"{issue % 1000:03d}"
    colors = ["Red", "Green"] if issue % 2 else ["Green"]
    return {"data": {"records": [{"issue": issue, "value": value, "resultFormatValueI18n": colors}]}}


def update_redis(data_to_fill: Dict[str, Any]) -> int:
    """The seed's ``update_redis``: the shared structure, SET, then EXPIRE 300. Answers the
    round's timestamp."""
    global _connection
    latest = data_to_fill["data"]["records"][0]
    colors = "GREEN   🟢" if "Green" in latest["resultFormatValueI18n"] else "RED   🔴"
    now = int(time.time() * 1000)
    shared_data = {
        "timestamp": now,
        "game_data": data_to_fill,
        "processed_data": {
            "issue_number": latest["issue"],
            "colors": colors,
            "result_format": latest["value"],
            "game_type": "RG5M",
            "last_update": now,
        },
    }
    try:
        r = get_redis_connection()
        if r:
            r.call("SET", SHARED_KEY, json.dumps(shared_data))
            r.call("EXPIRE", SHARED_KEY, 300)
            print("[EN] Shared data updated to Redis successfully", flush=True)
    except Exception as e:
        print(f"[EN] Failed to update Redis: {e}", flush=True)
        _connection = None
        raise
    return now


def main() -> None:
    """Plays a round every 3 seconds, as the seed's fetch loop does."""
    issue = 12345
    while True:
        update_redis(api_round(issue))
        issue += 1
        time.sleep(3)


if __name__ == "__main__":
    main()
