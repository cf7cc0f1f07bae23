"""One of the processes contending for a lock through the daemon.

    python lock_worker.py NAME ROUNDS COUNTER LOG

ROUNDS times: takes the lock, reads the number in COUNTER, waits a little, writes it plus one
(a read-modify-write that loses updates unless the lock excludes), appends ``FENCE PID`` to
LOG, releases.
"""

from __future__ import annotations

import os
import sys
import time

from _support import client


def main() -> None:
    name, rounds, counter, log = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    c = client()
    for _ in range(rounds):
        with c.lock(name, ttl_ms=5_000, wait_ms=30_000) as fence:
            with open(counter, encoding="utf-8") as f:
                value = int(f.read() or "0")
            time.sleep(0.003)
            with open(counter, "w", encoding="utf-8") as f:
                f.write(str(value + 1))
            with open(log, "a", encoding="utf-8") as f:
                f.write(f"{int(fence)} {os.getpid()}\n")
            fence.check()


if __name__ == "__main__":
    main()
