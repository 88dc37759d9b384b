"""A stored run as tables: its steps, its per-position metrics and its events, as pyarrow Tables,
then CSV or Parquet bytes, or a zip of the three.

- `steps`: one row per step: step, block, n_committed (commits and revisions), n_revised,
  n_remasked, masked_before, seconds, forward_passes; for a canvas model's run (steps with
  `extras.canvas`) also its stop quantities: canvas, canvas_step, mean_entropy, steps_stable,
  stop, n_accepted and n_renoised (null at a step without them).
- `positions`: one row per (step, position): the model's argmax token and its confidence,
  entropy and margin at that step (stored as float16, exported as float32: exact).
- `events`: one row per stored event, in the order they were written: step, position, kind
  (commit | revise | remask | force | remask_edit), token_id, token_text, prob (null where
  unknown: a recorded run without logits), violation_score (null where none), top_ids and
  top_probs (the alternatives at a commit; empty otherwise).

Every table starts with run_id. Parquet keeps the types (lists as lists) and carries the run
row (id, model, prompt, config, ...) as JSON in the schema metadata under b"run"; CSV is UTF-8
with a header, quoted where needed (token texts may hold commas, quotes and newlines: read it
with a CSV parser that allows newlines in quoted values, e.g. pyarrow's
`ParseOptions(newlines_in_values=True)` or Python's csv module), lists as JSON arrays.
"""

from __future__ import annotations

import io
import json
import zipfile
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from sqlalchemy import select

from explorer.decoding.records import StepExtras
from explorer.store.database import Event, Run, Step, TrajectoryStore, _run_dict

TABLES = ("steps", "positions", "events")
FORMATS = ("csv", "parquet")


def _run_metadata(run: dict) -> dict[bytes, bytes]:
    def plain(value):
        return value.isoformat() if isinstance(value, datetime) else value

    return {b"run": json.dumps({k: plain(v) for k, v in run.items()}, ensure_ascii=False).encode("utf-8")}


def _read(store: TrajectoryStore, run_id: int):
    with store.session() as s:
        run = s.get(Run, run_id)
        if run is None:
            raise KeyError(f"no run with id {run_id}")
        info = _run_dict(run)
        steps = s.execute(
            select(
                Step.step,
                Step.block,
                Step.n_committed,
                Step.masked_before,
                Step.seconds,
                Step.forward_passes,
                Step.argmax,
                Step.confidence,
                Step.entropy,
                Step.margin,
                Step.extras,
            )
            .where(Step.run_id == run_id)
            .order_by(Step.step)
        ).all()
        events = s.execute(
            select(
                Event.step,
                Event.position,
                Event.kind,
                Event.token_id,
                Event.token_text,
                Event.prob,
                Event.violation_score,
                Event.top_ids,
                Event.top_probs,
            )
            .where(Event.run_id == run_id)
            .order_by(Event.id)
        ).all()
    return info, steps, events


def run_tables(store: TrajectoryStore, run_id: int) -> dict[str, pa.Table]:
    """{"steps", "positions", "events"} of a stored run (read in one session); KeyError for an unknown id."""
    info, steps, events = _read(store, run_id)
    meta = _run_metadata(info)
    G, S = info["gen_length"], len(steps)
    kinds = [e.kind for e in events]
    per_step = {name: np.zeros(S, np.int64) for name in ("revise", "remask")}
    for e in events:
        if e.kind in per_step and 0 <= e.step < S:
            per_step[e.kind][e.step] += 1

    step_table = pa.table(
        {
            "run_id": pa.array([run_id] * S, pa.int64()),
            "step": pa.array([r.step for r in steps], pa.int64()),
            "block": pa.array([r.block for r in steps], pa.int64()),
            "n_committed": pa.array([r.n_committed for r in steps], pa.int64()),
            "n_revised": pa.array(per_step["revise"]),
            "n_remasked": pa.array(per_step["remask"]),
            "masked_before": pa.array([r.masked_before for r in steps], pa.int64()),
            "seconds": pa.array([r.seconds for r in steps], pa.float64()),
            "forward_passes": pa.array([r.forward_passes for r in steps], pa.int64()),
        }
    )
    for name, column in _canvas_columns([r.extras for r in steps]).items():
        step_table = step_table.append_column(name, column)
    step_table = step_table.replace_schema_metadata(meta)

    def blobs(index: int, dtype: str, out) -> np.ndarray:  # (S * G,) step-major, as stored
        if not steps:
            return np.zeros(0, out)
        return np.frombuffer(b"".join(r[index] for r in steps), dtype=dtype).astype(out)

    position_table = pa.table(
        {
            "run_id": pa.array(np.full(S * G, run_id, np.int64)),
            "step": pa.array(np.repeat(np.array([r.step for r in steps], np.int64), G)),
            "position": pa.array(np.tile(np.arange(G, dtype=np.int64), S)),
            "argmax": pa.array(blobs(6, "<i4", np.int32)),
            "confidence": pa.array(blobs(7, "<f2", np.float32)),
            "entropy": pa.array(blobs(8, "<f2", np.float32)),
            "margin": pa.array(blobs(9, "<f2", np.float32)),
        }
    ).replace_schema_metadata(meta)

    event_table = pa.table(
        {
            "run_id": pa.array([run_id] * len(events), pa.int64()),
            "step": pa.array([e.step for e in events], pa.int64()),
            "position": pa.array([e.position for e in events], pa.int64()),
            "kind": pa.array(kinds, pa.string()),
            "token_id": pa.array([e.token_id for e in events], pa.int64()),
            "token_text": pa.array([e.token_text for e in events], pa.string()),
            "prob": pa.array([e.prob if e.prob == e.prob else None for e in events], pa.float64()),  # NaN: null
            "violation_score": pa.array([e.violation_score for e in events], pa.float64()),
            "top_ids": pa.array([list(e.top_ids or []) for e in events], pa.list_(pa.int64())),
            "top_probs": pa.array([list(e.top_probs or []) for e in events], pa.list_(pa.float64())),
        }
    ).replace_schema_metadata(meta)
    return {"steps": step_table, "positions": position_table, "events": event_table}


# A canvas step's stop quantities as step columns: name -> (type, its value from the step's CanvasRecord)
CANVAS_COLUMNS = {
    "canvas": (pa.int64(), lambda c: c.canvas),
    "canvas_step": (pa.int64(), lambda c: c.step),
    "mean_entropy": (pa.float64(), lambda c: c.mean_entropy),
    "steps_stable": (pa.int64(), lambda c: c.steps_stable),
    "stop": (pa.bool_(), lambda c: c.stop),
    "n_accepted": (pa.int64(), lambda c: int(c.accepted.sum())),
    "n_renoised": (pa.int64(), lambda c: int(c.renoised.sum())),
}


def _canvas_columns(extras: list) -> dict[str, pa.Array]:
    """The canvas columns of the steps table when some step has `extras.canvas` (else none);
    null at a step without it or whose record is malformed (read as the views read it)."""
    records = [StepExtras.lenient(e).canvas for e in extras]
    if all(record is None for record in records):
        return {}
    return {
        name: pa.array([None if record is None else value(record) for record in records], kind)
        for name, (kind, value) in CANVAS_COLUMNS.items()
    }


def csv_bytes(table: pa.Table) -> bytes:
    """The table as UTF-8 CSV with a header; list columns as JSON arrays (CSV has no lists)."""
    columns = {}
    for name in table.column_names:
        column = table[name]
        if pa.types.is_list(column.type):
            column = pa.array([json.dumps(v) for v in column.to_pylist()], pa.string())
        columns[name] = column
    sink = io.BytesIO()
    pa_csv.write_csv(pa.table(columns), sink)
    return sink.getvalue()


def parquet_bytes(table: pa.Table) -> bytes:
    """The table as Parquet (zstd), with its schema metadata (the run row under b"run")."""
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def read_csv(data: bytes) -> pa.Table:
    """A table written by `csv_bytes`, read back (newlines inside quoted token texts allowed;
    list columns stay JSON text)."""
    return pa_csv.read_csv(
        io.BytesIO(data),
        parse_options=pa_csv.ParseOptions(newlines_in_values=True),
        convert_options=pa_csv.ConvertOptions(
            column_types={"token_text": pa.string(), "kind": pa.string()}, strings_can_be_null=False
        ),
    )


def export_zip(store: TrajectoryStore, run_id: int, fmt: str) -> bytes:
    """A zip of the run's three tables as `run-<id>-<table>.csv` (or `.parquet`)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    write = csv_bytes if fmt == "csv" else parquet_bytes
    sink = io.BytesIO()
    # Parquet is compressed already: stored as is; CSV deflated
    method = zipfile.ZIP_DEFLATED if fmt == "csv" else zipfile.ZIP_STORED
    with zipfile.ZipFile(sink, "w", compression=method) as archive:
        for name, table in run_tables(store, run_id).items():
            archive.writestr(f"run-{run_id}-{name}.{fmt}", write(table))
    return sink.getvalue()
