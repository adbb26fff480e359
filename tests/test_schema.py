"""One schema per entity kind (`corral.farm.SCHEMA`): every place that lists an entity's
stored fields is made from it or agrees with it, and these tests fail when one drifts."""

from __future__ import annotations

import typing
from dataclasses import fields

import pytest

from corral.farm import SCHEMA, Frame, Instance, Job, Worker, columns, key_columns, saved_fields, writable_columns
from corral.ports import FrameChange
from corral.snapshot import FrameModel, InstanceModel, JobModel, WorkerModel
from corral.states import Kind
from corral.store.rows import TABLES, frame_columns, instance_columns, job_columns, key_of, worker_columns
from corral.store.tables import table

CLASSES = {Kind.JOB: Job, Kind.FRAME: Frame, Kind.INSTANCE: Instance, Kind.WORKER: Worker}
#: Columns every farm table has beside an entity's own: when the row was last written,
#: and the change stamp (migration 0003).
BOOKKEEPING = {"updated_at", "rev"}


@pytest.mark.parametrize("kind", list(Kind))
def test_an_entity_s_dataclass_starts_with_its_stored_fields_in_schema_order(kind: Kind) -> None:
    """The store builds entities positionally (`Frame(*row)`): the order is the schema's."""
    names = [f.name for f in fields(CLASSES[kind])]
    assert names[: len(SCHEMA[kind])] == list(columns(kind))
    rest = set(names[len(SCHEMA[kind]):])
    assert rest <= {"depends_on", "runs", "frames", "instances"}, rest  # structure and history, never a column


@pytest.mark.parametrize("kind", list(Kind))
def test_the_table_holds_exactly_the_schema_s_columns(kind: Kind) -> None:
    t = table(TABLES[kind])
    assert set(t.columns.keys()) - BOOKKEEPING == set(columns(kind))
    assert {c.name for c in t.primary_key.columns} == set(key_columns(kind))


@pytest.mark.parametrize(("kind", "read"), [(Kind.JOB, job_columns), (Kind.FRAME, frame_columns),
                                            (Kind.INSTANCE, instance_columns), (Kind.WORKER, worker_columns)])
def test_the_store_reads_the_schema_s_columns_in_its_order(kind: Kind, read: typing.Callable[[str], str]) -> None:
    assert read("postgresql") == ", ".join(columns(kind))
    assert [c.split(" ")[0].strip("(") for c in read("sqlite").split(", ")] == list(columns(kind))


def test_a_changed_frame_row_holds_a_frame_s_stored_fields() -> None:
    assert len(typing.get_args(FrameChange)) == len(SCHEMA[Kind.FRAME])


def test_keys_and_writable_columns_come_from_the_schema() -> None:
    frame = Frame(12, 7)
    assert key_of(Kind.FRAME, frame) == {"job_id": 12, "number": 7}
    assert key_of(Kind.WORKER, Worker("r01")) == {"name": "r01"}
    for kind in Kind:
        assert "version" not in writable_columns(kind)
        assert not set(key_columns(kind)) & set(writable_columns(kind))
    assert set(saved_fields(frame)) == set(columns(Kind.FRAME))  # what the planner's scratch farm puts back


#: Stored fields a snapshot says another way, and why.
SAID_OTHERWISE = {
    "version": "corral's own compare-and-set counter, not the farm's",
    "job_id": "a frame or an instance is written inside its job",
    "hold": "a job's hold is its state (blocked, killed) or `suspended`",
}


@pytest.mark.parametrize(("kind", "model"), [(Kind.JOB, JobModel), (Kind.FRAME, FrameModel),
                                             (Kind.INSTANCE, InstanceModel), (Kind.WORKER, WorkerModel)])
def test_a_snapshot_can_state_every_stored_field(kind: Kind, model: type) -> None:
    """`corral dump` then `corral load` is lossless only if the snapshot format has a place
    for every stored field (tests/test_snapshot.py round-trips whole farms)."""
    missing = {c for c in columns(kind) if c not in model.model_fields and c not in SAID_OTHERWISE}
    assert not missing, f"{model.__name__} has no field for {sorted(missing)}"
