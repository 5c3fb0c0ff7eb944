"""A virtual-time event loop for exact tests of timers (batchers, deadlines) without sleeping."""

from __future__ import annotations

import asyncio


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock jumps straight to the next timer whenever nothing is ready to run."""

    def __init__(self):
        super().__init__()
        self._now = 1000.0
        inner, loop = self._selector, self

        class Selector:
            def select(self, timeout=None):
                if timeout:
                    loop._now += timeout
                return inner.select(0)

            def __getattr__(self, name):
                return getattr(inner, name)

        self._selector = Selector()

    def time(self):
        return self._now


def run(main):
    """Run coroutine function `main` to completion on a fresh virtual-time loop."""
    loop = VirtualClockLoop()
    try:
        return loop.run_until_complete(asyncio.wait_for(main(), 3600))
    finally:
        loop.close()
