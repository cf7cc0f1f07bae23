"""Sends admin messages ``msg-00000``... to a pid through the daemon, one at a time.

    python admin_sender.py PID FIRST END

A 503 (the daemon's storage refused: nothing stored) is sent again; any other failure
exits non-zero, since whether the message was stored is then unknown.
"""

from __future__ import annotations

import sys
import time

from _support import client
from botfleet_client import UnavailableError


def main() -> None:
    pid, first, end = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    c = client()
    for i in range(first, end):
        delay = 0.01
        while True:
            try:
                c.admin_send(pid, f"msg-{i:05d}")
                break
            except UnavailableError:
                time.sleep(delay)
                delay = min(delay * 2, 0.5)


if __name__ == "__main__":
    main()
