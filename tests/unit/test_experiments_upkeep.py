"""The experiments service forgets the captured rows, feedback and bandit policies of deleted endpoints."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from mve.control.experiments import Experiments

NOW = 1_800_000_000.0


class FakeStore:
    def __init__(self, names):
        self.names = names

    def list_endpoints(self):
        return [SimpleNamespace(name=n, status="InService") for n in self.names]


def test_rows_of_deleted_endpoints_are_forgotten(tmp_path):
    service = SimpleNamespace(store=FakeStore(["kept"]), data_capture_of=lambda endpoint: {})
    experiments = Experiments(service, tmp_path / "experiments.db", tmp_path / "metrics.db", clock=lambda: NOW)
    db = experiments.db
    try:
        with db.transaction() as c:
            for endpoint in ("kept", "gone"):
                c.execute("INSERT INTO captured (endpoint, variant, inference_id, time, rows) VALUES (?, 'A', 'i', ?, 1)", (endpoint, NOW))
                c.execute("INSERT INTO feedback VALUES (?, 'i', NULL, 1.0, ?, ?)", (endpoint, NOW - 1, NOW - 1))
                c.execute("INSERT INTO bandit_policies VALUES (?, '{}')", (endpoint,))
            # Feedback received after the endpoint list was read belongs to an endpoint created since.
            c.execute("INSERT INTO feedback VALUES ('new', 'i', NULL, 1.0, ?, ?)", (NOW + 1, NOW + 1))
        assert asyncio.run(experiments.forget_deleted_endpoints()) == 2
        left = lambda table: sorted(r[0] for r in db.connection().execute(f"SELECT endpoint FROM {table}"))  # noqa: E731
        assert left("captured") == ["kept"]
        assert left("feedback") == ["kept", "new"]
        assert left("bandit_policies") == ["kept"]
    finally:
        experiments.close()
