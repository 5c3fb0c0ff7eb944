"""The control plane's durable state, in SQLite (WAL mode) behind one small interface.

`Store` is the interface the service and the reconciler use; `SqliteStore` is the embedded
implementation on ``<data-dir>/mve.db``. A server database can replace it by implementing the same
methods. Records are the dataclasses of `mve.control.records`; immutable parts (models, configs)
are kept as JSON documents, mutable state (endpoints, variants, instances) in columns.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

from mve.control.records import (
    DeploymentRecord,
    GreenVariant,
    Batching,
    EndpointConfigRecord,
    EndpointRecord,
    InstanceRecord,
    ModelRecord,
    TensorSpec,
    VariantSpec,
    VariantState,
    WeightChange,
    WeightChangeSource,
)
from mve.errors import ResourceAlreadyExists

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS models (
    name TEXT PRIMARY KEY, created REAL NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS endpoint_configs (
    name TEXT PRIMARY KEY, created REAL NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS config_models (
    config_name TEXT NOT NULL, model_name TEXT NOT NULL, PRIMARY KEY (config_name, model_name));
CREATE TABLE IF NOT EXISTS endpoints (
    name TEXT PRIMARY KEY, arn TEXT NOT NULL, config_name TEXT NOT NULL, status TEXT NOT NULL,
    failure_reason TEXT NOT NULL, created REAL NOT NULL, modified REAL NOT NULL, tags TEXT NOT NULL,
    data_capture TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS variants (
    endpoint_name TEXT NOT NULL, position INTEGER NOT NULL, variant_name TEXT NOT NULL,
    desired_weight REAL NOT NULL, current_weight REAL NOT NULL, desired_instance_count INTEGER NOT NULL,
    status TEXT NOT NULL, status_message TEXT NOT NULL, status_since REAL NOT NULL,
    shadow INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (endpoint_name, variant_name));
CREATE TABLE IF NOT EXISTS instances (
    endpoint_name TEXT NOT NULL, variant_name TEXT NOT NULL, instance_id TEXT NOT NULL,
    pid INTEGER NOT NULL, address TEXT NOT NULL, status TEXT NOT NULL, started REAL NOT NULL,
    log_path TEXT NOT NULL, config_name TEXT NOT NULL DEFAULT '', PRIMARY KEY (endpoint_name, instance_id));
DROP TABLE IF EXISTS variant_stats;
CREATE TABLE IF NOT EXISTS deployments (endpoint_name TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS deployment_configs (endpoint_name TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS weight_changes (
    id INTEGER PRIMARY KEY AUTOINCREMENT, endpoint_name TEXT NOT NULL, time REAL NOT NULL,
    source TEXT NOT NULL, weights TEXT NOT NULL, reason TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS weight_changes_by_time ON weight_changes (endpoint_name, time, id);
"""

# Columns added after the first stores were written: (table, column, definition).
_ADDED_COLUMNS = (
    ("instances", "config_name", "TEXT NOT NULL DEFAULT ''"),  # updates
    ("variants", "shadow", "INTEGER NOT NULL DEFAULT 0"),  # shadow variants
    ("endpoints", "data_capture", "TEXT NOT NULL DEFAULT ''"),  # a retained DataCaptureConfig
)
_ENDPOINT_COLUMNS = "name, arn, config_name, status, failure_reason, created, modified, tags, data_capture"
_VARIANT_COLUMNS = (
    "variant_name, desired_weight, current_weight, desired_instance_count, status, status_message, status_since, shadow"
)


class Store:
    """What the control plane needs from its state store (implemented by `SqliteStore`)."""

    def control_plane_id(self) -> str: ...
    def next_route_version(self) -> int: ...
    def insert_model(self, model: ModelRecord) -> None: ...
    def get_model(self, name: str) -> ModelRecord | None: ...
    def list_models(self) -> list[ModelRecord]: ...
    def delete_model(self, name: str) -> bool: ...
    def artifact_in_use(self, sha256: str) -> bool: ...
    def insert_config(self, config: EndpointConfigRecord) -> None: ...
    def get_config(self, name: str) -> EndpointConfigRecord | None: ...
    def list_configs(self) -> list[EndpointConfigRecord]: ...
    def delete_config(self, name: str) -> bool: ...
    def configs_using_model(self, model_name: str) -> list[str]: ...
    def insert_endpoint(self, endpoint: EndpointRecord) -> None: ...
    def save_endpoint(self, endpoint: EndpointRecord) -> None: ...
    def get_endpoint(self, name: str) -> EndpointRecord | None: ...
    def list_endpoints(self) -> list[EndpointRecord]: ...
    def delete_endpoint(self, name: str) -> bool: ...
    def endpoints_using_config(self, config_name: str) -> list[str]: ...
    def put_instance(self, instance: InstanceRecord) -> None: ...
    def delete_instance(self, endpoint_name: str, instance_id: str) -> None: ...
    def list_instances(self, endpoint_name: str | None = None) -> list[InstanceRecord]: ...
    def put_deployment(self, deployment: DeploymentRecord) -> None: ...
    def get_deployment(self, endpoint_name: str) -> DeploymentRecord | None: ...
    def list_deployments(self) -> list[DeploymentRecord]: ...
    def delete_deployment(self, endpoint_name: str) -> None: ...
    def put_last_deployment_config(self, endpoint_name: str, policy: dict | None) -> None: ...
    def get_last_deployment_config(self, endpoint_name: str) -> dict | None: ...
    def record_weight_change(
        self, endpoint_name: str, time: float, source: str, weights: dict[str, float], reason: str = ""
    ) -> WeightChange: ...
    def weight_changes(
        self,
        endpoint_name: str,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = None,
        *,
        automatic_only: bool = False,
        newest_first: bool = False,
    ) -> list[WeightChange]: ...
    def weights_in_effect(self, endpoint_name: str, at: float | None = None) -> WeightChange | None: ...
    def close(self) -> None: ...


def _model_from_json(body: str) -> ModelRecord:
    data = json.loads(body)
    data["inputs"] = [TensorSpec(i["name"], i["datatype"], tuple(i["shape"])) for i in data["inputs"]]
    data["outputs"] = [TensorSpec(o["name"], o["datatype"], tuple(o["shape"])) for o in data["outputs"]]
    return ModelRecord(**data)


def _deployment_from_json(body: str) -> DeploymentRecord:
    data = json.loads(body)
    data["green"] = [GreenVariant(**g) for g in data["green"]]
    return DeploymentRecord(**data)


def _variant_from_json(data: dict) -> VariantSpec:
    return VariantSpec(**{**data, "batching": Batching(**data["batching"])})


def _config_from_json(body: str) -> EndpointConfigRecord:
    data = json.loads(body)
    data["production_variants"] = [_variant_from_json(v) for v in data["production_variants"]]
    # Configs stored before shadow variants existed have none.
    data["shadow_variants"] = [_variant_from_json(v) for v in data.get("shadow_variants", [])]
    return EndpointConfigRecord(**data)


def _weight_change(row) -> WeightChange:
    return WeightChange(endpoint_name=row[0], time=row[1], source=row[2], weights=json.loads(row[3]), reason=row[4])


class SqliteStore(Store):
    """`Store` on one SQLite file in WAL mode; used from the event loop's thread only."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), isolation_level=None, timeout=10.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        for table, column, definition in _ADDED_COLUMNS:
            columns = [row[1] for row in self._db.execute(f"PRAGMA table_info({table})")]
            if column not in columns:  # a store written by an older mve
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
        with self._tx():
            row = self._db.execute("SELECT value FROM meta WHERE key='control_plane_id'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta VALUES ('control_plane_id', ?)", (uuid.uuid4().hex,))

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    # ------------------------------------------------------------ meta

    def control_plane_id(self) -> str:
        """A random id made when the store was created; the same across restarts on this store."""
        return self._db.execute("SELECT value FROM meta WHERE key='control_plane_id'").fetchone()[0]

    def next_route_version(self) -> int:
        """The next routing table version: kept here so it keeps increasing across restarts."""
        with self._tx() as db:
            row = db.execute("SELECT value FROM meta WHERE key='route_version'").fetchone()
            version = (int(row[0]) if row else 0) + 1
            db.execute("INSERT OR REPLACE INTO meta VALUES ('route_version', ?)", (str(version),))
        return version

    # ------------------------------------------------------------ models

    def insert_model(self, model: ModelRecord) -> None:
        """Add a model; ResourceAlreadyExists when the name is taken."""
        try:
            self._db.execute(
                "INSERT INTO models VALUES (?, ?, ?)", (model.name, model.creation_time, json.dumps(asdict(model)))
            )
        except sqlite3.IntegrityError:
            raise ResourceAlreadyExists(f'Cannot create already existing model "{model.arn}".') from None

    def get_model(self, name: str) -> ModelRecord | None:
        """The model called `name`, or None."""
        row = self._db.execute("SELECT body FROM models WHERE name=?", (name,)).fetchone()
        return _model_from_json(row[0]) if row else None

    def list_models(self) -> list[ModelRecord]:
        """Every model."""
        return [_model_from_json(r[0]) for r in self._db.execute("SELECT body FROM models")]

    def delete_model(self, name: str) -> bool:
        """Delete a model; False when there was none."""
        return self._db.execute("DELETE FROM models WHERE name=?", (name,)).rowcount > 0

    def artifact_in_use(self, sha256: str) -> bool:
        """Whether any model still refers to the artifact with this digest."""
        return any(m.artifact_sha256 == sha256 for m in self.list_models())

    # ------------------------------------------------------------ endpoint configs

    def insert_config(self, config: EndpointConfigRecord) -> None:
        """Add an endpoint config; ResourceAlreadyExists when the name is taken."""
        try:
            with self._tx() as db:
                db.execute(
                    "INSERT INTO endpoint_configs VALUES (?, ?, ?)",
                    (config.name, config.creation_time, json.dumps(asdict(config))),
                )
                db.executemany(
                    "INSERT OR IGNORE INTO config_models VALUES (?, ?)",
                    [(config.name, v.model_name) for v in config.all_variants],
                )
        except sqlite3.IntegrityError:
            raise ResourceAlreadyExists(f'Cannot create already existing endpoint configuration "{config.arn}".') from None

    def get_config(self, name: str) -> EndpointConfigRecord | None:
        """The endpoint config called `name`, or None."""
        row = self._db.execute("SELECT body FROM endpoint_configs WHERE name=?", (name,)).fetchone()
        return _config_from_json(row[0]) if row else None

    def list_configs(self) -> list[EndpointConfigRecord]:
        """Every endpoint config."""
        return [_config_from_json(r[0]) for r in self._db.execute("SELECT body FROM endpoint_configs")]

    def delete_config(self, name: str) -> bool:
        """Delete an endpoint config; False when there was none."""
        with self._tx() as db:
            db.execute("DELETE FROM config_models WHERE config_name=?", (name,))
            return db.execute("DELETE FROM endpoint_configs WHERE name=?", (name,)).rowcount > 0

    def configs_using_model(self, model_name: str) -> list[str]:
        """Names of the endpoint configs that have a variant of this model."""
        rows = self._db.execute("SELECT config_name FROM config_models WHERE model_name=? ORDER BY 1", (model_name,))
        return [r[0] for r in rows]

    # ------------------------------------------------------------ endpoints

    def _write_variants(self, db: sqlite3.Connection, endpoint: EndpointRecord) -> None:
        db.execute("DELETE FROM variants WHERE endpoint_name=?", (endpoint.name,))
        db.executemany(
            f"INSERT INTO variants (endpoint_name, position, {_VARIANT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    endpoint.name,
                    position,
                    v.variant_name,
                    v.desired_weight,
                    v.current_weight,
                    v.desired_instance_count,
                    v.status,
                    v.status_message,
                    v.status_since,
                    int(v.shadow),
                )
                for position, v in enumerate(endpoint.variants)
            ],
        )

    def insert_endpoint(self, endpoint: EndpointRecord) -> None:
        """Add an endpoint; ResourceAlreadyExists when the name is taken."""
        try:
            with self._tx() as db:
                db.execute(
                    f"INSERT INTO endpoints ({_ENDPOINT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        endpoint.name,
                        endpoint.arn,
                        endpoint.config_name,
                        endpoint.status,
                        endpoint.failure_reason,
                        endpoint.creation_time,
                        endpoint.last_modified_time,
                        json.dumps(endpoint.tags),
                        _capture_column(endpoint.data_capture),
                    ),
                )
                self._write_variants(db, endpoint)
        except sqlite3.IntegrityError:
            raise ResourceAlreadyExists(f'Cannot create already existing endpoint "{endpoint.arn}".') from None

    def save_endpoint(self, endpoint: EndpointRecord) -> None:
        """Write an existing endpoint's status and variant state."""
        with self._tx() as db:
            db.execute(
                "UPDATE endpoints SET config_name=?, status=?, failure_reason=?, modified=?, data_capture=? WHERE name=?",
                (
                    endpoint.config_name,
                    endpoint.status,
                    endpoint.failure_reason,
                    endpoint.last_modified_time,
                    _capture_column(endpoint.data_capture),
                    endpoint.name,
                ),
            )
            self._write_variants(db, endpoint)

    def _endpoint(self, row) -> EndpointRecord:
        name = row[0]
        variants = [
            VariantState(*r[:-1], shadow=bool(r[-1]))
            for r in self._db.execute(
                f"SELECT {_VARIANT_COLUMNS} FROM variants WHERE endpoint_name=? ORDER BY position", (name,)
            )
        ]
        return EndpointRecord(
            name=name,
            arn=row[1],
            config_name=row[2],
            status=row[3],
            failure_reason=row[4],
            creation_time=row[5],
            last_modified_time=row[6],
            variants=variants,
            tags=json.loads(row[7]),
            data_capture=json.loads(row[8]) if row[8] else None,
        )

    def get_endpoint(self, name: str) -> EndpointRecord | None:
        """The endpoint called `name`, or None."""
        row = self._db.execute(f"SELECT {_ENDPOINT_COLUMNS} FROM endpoints WHERE name=?", (name,)).fetchone()
        return self._endpoint(row) if row else None

    def list_endpoints(self) -> list[EndpointRecord]:
        """Every endpoint."""
        rows = self._db.execute(f"SELECT {_ENDPOINT_COLUMNS} FROM endpoints ORDER BY created").fetchall()
        return [self._endpoint(r) for r in rows]

    def delete_endpoint(self, name: str) -> bool:
        """Delete an endpoint with its variants, instance records and weight history; False when there was none."""
        with self._tx() as db:
            db.execute("DELETE FROM variants WHERE endpoint_name=?", (name,))
            db.execute("DELETE FROM weight_changes WHERE endpoint_name=?", (name,))
            db.execute("DELETE FROM instances WHERE endpoint_name=?", (name,))
            db.execute("DELETE FROM deployments WHERE endpoint_name=?", (name,))
            db.execute("DELETE FROM deployment_configs WHERE endpoint_name=?", (name,))
            return db.execute("DELETE FROM endpoints WHERE name=?", (name,)).rowcount > 0

    def endpoints_using_config(self, config_name: str) -> list[str]:
        """Names of the endpoints running this endpoint config."""
        rows = self._db.execute("SELECT name FROM endpoints WHERE config_name=? ORDER BY 1", (config_name,))
        return [r[0] for r in rows]

    # ------------------------------------------------------------ instances

    def put_instance(self, instance: InstanceRecord) -> None:
        """Insert or replace an instance record."""
        self._db.execute(
            "INSERT OR REPLACE INTO instances VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                instance.endpoint_name,
                instance.variant_name,
                instance.instance_id,
                instance.pid,
                instance.address,
                instance.status,
                instance.started_at,
                instance.log_path,
                instance.config_name,
            ),
        )

    def delete_instance(self, endpoint_name: str, instance_id: str) -> None:
        """Forget an instance."""
        self._db.execute("DELETE FROM instances WHERE endpoint_name=? AND instance_id=?", (endpoint_name, instance_id))

    def list_instances(self, endpoint_name: str | None = None) -> list[InstanceRecord]:
        """Instances of one endpoint (or all), oldest first."""
        sql = "SELECT * FROM instances"
        rows = (
            self._db.execute(sql + " WHERE endpoint_name=? ORDER BY started, instance_id", (endpoint_name,))
            if endpoint_name is not None
            else self._db.execute(sql + " ORDER BY started, instance_id")
        )
        return [InstanceRecord(*r) for r in rows.fetchall()]

    # ------------------------------------------------------------ deployments

    def put_deployment(self, deployment: DeploymentRecord) -> None:
        """Insert or replace the endpoint's update in progress."""
        self._db.execute(
            "INSERT OR REPLACE INTO deployments VALUES (?, ?)",
            (deployment.endpoint_name, json.dumps(asdict(deployment))),
        )

    def get_deployment(self, endpoint_name: str) -> DeploymentRecord | None:
        """The endpoint's update in progress, or None."""
        row = self._db.execute("SELECT body FROM deployments WHERE endpoint_name=?", (endpoint_name,)).fetchone()
        return _deployment_from_json(row[0]) if row else None

    def list_deployments(self) -> list[DeploymentRecord]:
        """Every update in progress."""
        return [_deployment_from_json(r[0]) for r in self._db.execute("SELECT body FROM deployments").fetchall()]

    def delete_deployment(self, endpoint_name: str) -> None:
        """Forget the endpoint's update (finished or rolled back)."""
        self._db.execute("DELETE FROM deployments WHERE endpoint_name=?", (endpoint_name,))

    def put_last_deployment_config(self, endpoint_name: str, policy: dict | None) -> None:
        """Keep (or, with None, forget) the DeploymentConfig of the endpoint's last update."""
        if policy is None:
            self._db.execute("DELETE FROM deployment_configs WHERE endpoint_name=?", (endpoint_name,))
        else:
            self._db.execute("INSERT OR REPLACE INTO deployment_configs VALUES (?, ?)", (endpoint_name, json.dumps(policy)))

    def get_last_deployment_config(self, endpoint_name: str) -> dict | None:
        """The DeploymentConfig of the endpoint's last update, or None."""
        row = self._db.execute("SELECT body FROM deployment_configs WHERE endpoint_name=?", (endpoint_name,)).fetchone()
        return json.loads(row[0]) if row else None


    # ------------------------------------------------------------ weight history

    def record_weight_change(
        self, endpoint_name: str, time: float, source: str, weights: dict[str, float], reason: str = ""
    ) -> WeightChange:
        """Append one change of the endpoint's production weights (`WeightChange`) and return it."""
        change = WeightChange(endpoint_name, time, source, {k: float(v) for k, v in weights.items()}, reason)
        self._db.execute(
            "INSERT INTO weight_changes (endpoint_name, time, source, weights, reason) VALUES (?, ?, ?, ?, ?)",
            (endpoint_name, time, source, json.dumps(change.weights), reason),
        )
        return change

    def weight_changes(
        self,
        endpoint_name: str,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = None,
        *,
        automatic_only: bool = False,
        newest_first: bool = False,
    ) -> list[WeightChange]:
        """The endpoint's weight changes with `since` <= time < `until`, oldest first.

        `limit` keeps the first `limit` in that order (with `newest_first`, the newest ones);
        `automatic_only` keeps the changes not made by CreateEndpoint, an operator or an update.
        Changes at the same time keep the order they were recorded in.
        """
        sql = "SELECT endpoint_name, time, source, weights, reason FROM weight_changes WHERE endpoint_name=?"
        args: list = [endpoint_name]
        if since is not None:
            sql += " AND time >= ?"
            args.append(since)
        if until is not None:
            sql += " AND time < ?"
            args.append(until)
        if automatic_only:
            sql += f" AND source NOT IN ({', '.join('?' for _ in WeightChangeSource.MANUAL)})"
            args.extend(sorted(WeightChangeSource.MANUAL))
        sql += " ORDER BY time DESC, id DESC" if newest_first else " ORDER BY time, id"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(max(limit, 0))
        return [_weight_change(row) for row in self._db.execute(sql, args).fetchall()]

    def weights_in_effect(self, endpoint_name: str, at: float | None = None) -> WeightChange | None:
        """The last weight change at or before `at` (default: the latest), or None."""
        sql = "SELECT endpoint_name, time, source, weights, reason FROM weight_changes WHERE endpoint_name=?"
        args: list = [endpoint_name]
        if at is not None:
            sql += " AND time <= ?"
            args.append(at)
        row = self._db.execute(sql + " ORDER BY time DESC, id DESC LIMIT 1", args).fetchone()
        return _weight_change(row) if row else None


def _capture_column(capture: dict | None) -> str:
    return "" if capture is None else json.dumps(capture)
