"""A bot reading its admin messages through the daemon (seed 004), as a separate process
that the Rust suite kills and starts again.

    python admin_consumer.py PID OUT LAST

Appends ``ID<TAB>MESSAGE`` to OUT for each message, in the order received, before asking for
the next one (which acknowledges it); exits 0 after the message LAST, acknowledged.
"""

from __future__ import annotations

import sys

from _support import client


def main() -> None:
    pid, out, last = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    c = client()
    with open(out, "a", encoding="utf-8") as f, c.admin_inbox(pid, wait_ms=1000) as inbox:
        for message in inbox:
            f.write(f"{message.id}\t{message.message}\n")
            f.flush()
            if message.message == last:
                break


if __name__ == "__main__":
    main()
