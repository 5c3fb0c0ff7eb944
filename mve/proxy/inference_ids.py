"""Inference ids the proxy makes for invocations that came without one.

An id is shaped like a random (version 4) UUID, so that anything that stores UUIDs takes it, but
is made without a system call: 74 random bits drawn once per process (`os.urandom`) name the
process, and a counter numbers its invocations (the last 12 hex digits; only after 2**48
invocations, 89 years at 100,000 a second, would it need a 13th). Ids are unique within a process
by the counter and across proxies by the random part.
"""

from __future__ import annotations

import itertools
import os


class InferenceIds:
    """Makes inference ids: ``xxxxxxxx-xxxx-4xxx-Vxxx-nnnnnnnnnnnn``, V in 8-b, n the counter, lower-case hex."""

    def __init__(self, random_bits: int | None = None):
        """`random_bits` (80 bits; tests only) replaces the process's random part."""
        if random_bits is None:
            random_bits = int.from_bytes(os.urandom(10), "big")
        text = f"{random_bits & (2**80 - 1):020x}"
        version = "4" + text[13:16]  # RFC 4122: version 4 in the 13th hex digit
        variant = f"{0x8 | (int(text[16], 16) & 0x3):x}" + text[17:20]  # and 10 in the two bits after
        self.prefix = f"{text[:8]}-{text[8:12]}-{version}-{variant}-"
        self._counter = itertools.count(1)

    def new(self) -> str:
        """The next id of this process."""
        return self.prefix + format(next(self._counter), "012x")  # the quickest of the spellings measured
