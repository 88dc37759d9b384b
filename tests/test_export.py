"""A stored run as CSV and Parquet tables (explorer/store/export.py): written, read back with
pyarrow and compared with the store (every event in order, token ids and texts, probabilities
within float32, the per-position metrics exactly); hostile token texts survive CSV."""

from __future__ import annotations

import csv
import io
import json
import zipfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import select
from synthetic_runs import MASK_ID, synthetic_records

from explorer.api import decode
from explorer.decoding.callbacks import RunStart
from explorer.decoding.config import DecodeConfig
from explorer.decoding.records import DecodeResult
from explorer.store.database import Event, TrajectoryStore
from explorer.store.export import csv_bytes, export_zip, parquet_bytes, read_csv, run_tables

HOSTILE = ["a,b", 'say "hi"', "two\nlines", "cr\r\nlf", "", " lead", "=1+2", "<script>alert(1)</script>", "é, ü ‽"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = TrajectoryStore(f"sqlite:///{tmp_path_factory.mktemp('export')}/t.db")
    yield s
    s.engine.dispose()


@pytest.fixture(scope="module")
def decoded(store, denoiser):
    """A real run with revisions-free commits, violations and energies (steps 8 of 32 tokens)."""
    out = decode(
        "once upon a time",
        denoiser,
        store=store,
        gen_length=32,
        steps=8,
        strategy="rcr",  # re-masks: remask events too
        temperature=0.7,
        seed=3,
        violations=True,
    )
    return out.run_id


@pytest.fixture(scope="module")
def hostile(store):
    """A synthetic run whose token texts hold commas, quotes, newlines and markup."""
    G, S = 48, 4
    text = {3 + i: t for i, t in enumerate(HOSTILE)}  # token ids 3.. (synthetic_records' vocabulary)
    start = RunStart("synthetic", "p", [5], DecodeConfig(gen_length=G, steps=S), MASK_ID, "cpu")
    run_id = store.create_run(start, text.get)
    store.add_steps(run_id, synthetic_records(G, S, seed=1, vocab=3 + len(HOSTILE)), text.get)
    store.finish_run(run_id, DecodeResult("completed", [3] * G, "x", S, 0.0))
    return run_id


def stored_events(store, run_id):
    with store.session() as s:
        return s.scalars(select(Event).where(Event.run_id == run_id).order_by(Event.id)).all()


def _check_events(table: pa.Table, store, run_id, lists_as_json: bool) -> None:
    rows = table.to_pylist()
    events = stored_events(store, run_id)
    assert len(rows) == len(events) > 0
    for row, e in zip(rows, events):
        assert row["run_id"] == run_id
        assert (row["step"], row["position"], row["kind"], row["token_id"]) == (e.step, e.position, e.kind, e.token_id)
        assert row["token_text"] == e.token_text
        assert np.float32(row["prob"]) == np.float32(e.prob)
        if e.violation_score is None:
            assert row["violation_score"] is None
        else:
            assert np.float32(row["violation_score"]) == np.float32(e.violation_score)
        top_ids, top_probs = row["top_ids"], row["top_probs"]
        if lists_as_json:
            top_ids, top_probs = json.loads(top_ids), json.loads(top_probs)
        assert top_ids == list(e.top_ids)
        assert np.allclose(np.float32(top_probs), np.float32(e.top_probs), rtol=0, atol=0)


def _check_against_arrays(tables: dict[str, pa.Table], store, run_id) -> None:
    """The tables hold what read_arrays gives: the commits (token, prob) and the metrics."""
    arrays = store.read_arrays(run_id)
    events = tables["events"].to_pylist()
    commits = [e for e in events if e["kind"] in ("commit", "revise")]
    assert [c["token_id"] for c in commits] == arrays.commits.token.tolist()
    assert [c["position"] for c in commits] == arrays.commits.position.tolist()
    assert np.array_equal(np.float32([c["prob"] for c in commits]), arrays.commits.prob)
    remasks = [e for e in events if e["kind"] == "remask"]
    assert [(e["step"], e["position"], e["token_id"]) for e in remasks] == list(
        zip(arrays.remasks.step.tolist(), arrays.remasks.position.tolist(), arrays.remasks.token.tolist())
    )
    positions = tables["positions"]
    G, S = arrays.gen_length, arrays.n_steps
    assert positions.num_rows == G * S
    for name in ("confidence", "entropy", "margin"):
        # (G, S) like the arrays; CSV reads back float64: float32 round-trips through its text
        column = positions[name].to_numpy(zero_copy_only=False).astype(np.float32).reshape(S, G).T
        assert np.array_equal(column, getattr(arrays, name), equal_nan=True), name
    argmax = positions["argmax"].to_numpy(zero_copy_only=False).reshape(S, G).T
    assert np.array_equal(argmax, arrays.argmax)
    steps = tables["steps"].to_pylist()
    assert [s["step"] for s in steps] == arrays.steps.tolist()
    assert [s["n_committed"] for s in steps] == arrays.n_committed.tolist()
    assert sum(s["n_remasked"] for s in steps) == len(remasks)


def test_parquet_round_trip(store, decoded):
    tables = run_tables(store, decoded)
    back = {name: pq.read_table(io.BytesIO(parquet_bytes(t))) for name, t in tables.items()}
    for name, table in back.items():
        assert table.equals(tables[name]), name
        run = json.loads(table.schema.metadata[b"run"])
        assert run["id"] == decoded and run["config"]["strategy"] == "rcr"
    assert back["positions"].schema.field("confidence").type == pa.float32()
    assert back["events"].schema.field("top_ids").type == pa.list_(pa.int64())
    _check_events(back["events"], store, decoded, lists_as_json=False)
    _check_against_arrays(back, store, decoded)
    kinds = set(back["events"]["kind"].to_pylist())
    assert {"commit", "remask"} <= kinds


def test_csv_round_trip(store, decoded):
    tables = run_tables(store, decoded)
    back = {name: read_csv(csv_bytes(t)) for name, t in tables.items()}
    _check_events(back["events"], store, decoded, lists_as_json=True)
    as_parquet_types = dict(back)
    events = back["events"]
    lists = {
        "top_ids": pa.array([json.loads(v) for v in events["top_ids"].to_pylist()], pa.list_(pa.int64())),
        "top_probs": pa.array([json.loads(v) for v in events["top_probs"].to_pylist()], pa.list_(pa.float64())),
    }
    for name, column in lists.items():
        events = events.set_column(events.schema.get_field_index(name), name, column)
    as_parquet_types["events"] = events
    _check_against_arrays(as_parquet_types, store, decoded)


def test_hostile_token_texts_survive_csv(store, hostile):
    table = run_tables(store, hostile)["events"]
    data = csv_bytes(table)
    back = read_csv(data)
    assert back["token_text"].to_pylist() == table["token_text"].to_pylist()
    assert set(HOSTILE) <= set(back["token_text"].to_pylist())
    _check_events(back, store, hostile, lists_as_json=True)
    # any CSV reader, not only pyarrow's: Python's csv module reads the same texts
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))
    assert [r["token_text"] for r in rows] == table["token_text"].to_pylist()


def test_export_zip_holds_the_three_tables(store, decoded):
    for fmt in ("csv", "parquet"):
        archive = zipfile.ZipFile(io.BytesIO(export_zip(store, decoded, fmt)))
        names = sorted(archive.namelist())
        assert names == sorted(f"run-{decoded}-{t}.{fmt}" for t in ("steps", "positions", "events"))
        events = archive.read(f"run-{decoded}-events.{fmt}")
        table = read_csv(events) if fmt == "csv" else pq.read_table(io.BytesIO(events))
        assert table.num_rows == len(stored_events(store, decoded))
    with pytest.raises(ValueError, match="unknown export format"):
        export_zip(store, decoded, "xlsx")
    with pytest.raises(KeyError):
        run_tables(store, 987654)
