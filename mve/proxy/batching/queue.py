"""The waiting room of a variant's batcher: callers (`Member`) in queues of one compatibility key."""

from __future__ import annotations


class Member:
    """One caller's request waiting in (or sent with) a batch."""

    __slots__ = ("request", "parts", "rows", "deadline", "enqueued_at", "future", "queue", "tail", "wire", "span")

    def __init__(self, request, parts, rows, deadline, enqueued_at, future, queue, tail, wire):
        self.request = request
        self.parts = parts
        self.rows = rows
        self.deadline = deadline
        self.enqueued_at = enqueued_at
        self.future = future
        self.queue = queue
        self.tail = tail
        self.wire = wire
        self.span = None  # the caller's trace when the proxy traces (`mve.tracing.capture`)


class KeyQueue:
    """The members of one compatibility key, oldest first (a dict: ordered, O(1) removal)."""

    __slots__ = ("key", "members", "rows")

    def __init__(self, key):
        self.key = key
        self.members: dict[int, Member] = {}
        self.rows = 0

    def oldest(self) -> Member:
        return next(iter(self.members.values()))

    def take(self, max_rows: int) -> list[Member]:
        """Oldest members while they fit in `max_rows`; always at least one."""
        taken: list[Member] = []
        rows = 0
        for member in self.members.values():
            if taken and rows + member.rows > max_rows:
                break
            taken.append(member)
            rows += member.rows
        for member in taken:
            del self.members[id(member)]
        self.rows -= rows
        return taken
