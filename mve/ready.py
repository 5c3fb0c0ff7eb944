"""The one line a server prints when it is ready, so that its parent can find its address."""

from __future__ import annotations

import json
import os
import sys


def announce_ready(service: str, address: str, **extra) -> None:
    """Print ``{"event": "ready", "service": ..., "address": ..., "pid": ...}`` on stdout and flush."""
    event = {"event": "ready", "service": service, "address": address, "pid": os.getpid(), **extra}
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()
