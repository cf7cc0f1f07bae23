"""A bot reading its admin messages through the daemon (seed 004), as a separate process
that the Rust suite kills and starts again.

    python admin_consumer.py PID OUT LAST [STALL]

Appends ``ID<TAB>MESSAGE`` to OUT for each message, in the order received, before asking for
the next one (which acknowledges it); exits 0 after the message LAST, acknowledged. After
recording the message STALL it hangs without acknowledging it, to be killed there: the
message must then come again to the next consumer.
"""

from __future__ import annotations

import sys
import threading

from _support import client


def main() -> None:
    pid, out, last = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    stall = sys.argv[4] if len(sys.argv) > 4 else None
    c = client()
    with open(out, "a", encoding="utf-8") as f, c.admin_inbox(pid, wait_ms=1000) as inbox:
        for message in inbox:
            f.write(f"{message.id}\t{message.message}\n")
            f.flush()
            if message.message == stall:
                threading.Event().wait()
            if message.message == last:
                break


if __name__ == "__main__":
    main()
