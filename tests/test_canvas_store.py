"""Canvas runs and recorded runs in the store, bundles and table exports.

- A real run of the tiny DiffusionGemma (tests/test_diffusion_gemma.py's model: mask id = the
  noise marker, one past the vocabulary; argmax -1 outside each step's canvas; `extras.canvas`)
  is stored, exported as a bundle, imported into another store (SQLite and PostgreSQL, the
  model's vocabulary known to the importer) and reads back equal; exporting the import gives
  the same bundle.
- A recorded run without logits (RecordingStreamer with_logits=False, Dream's history): its
  commit probabilities are unknown, stored NULL, read back NaN, null in a bundle, empty in CSV.
- A bundle with a malformed `extras.canvas` (misaligned arrays, a token id outside the
  vocabulary, a canvas past gen_length) or a bad argmax / mask id is refused in one line.
- The CSV and Parquet export of a canvas run, with the canvas stop quantities per step.
"""

from __future__ import annotations

import copy
import io
import json
import zipfile
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from test_diffusion_gemma import (  # noqa: F401  (gemma_dir, model, denoiser: fixtures used by name)
    PROMPT,
    VOCAB,
    denoiser,
    engine_config,
    gemma_dir,
    model,
)

from explorer.decoding.engine import run_decode
from explorer.recording import RecordingStreamer, record_dream_history
from explorer.store.arrays import RunArrays
from explorer.store.bundle import BundleError, export_run, export_run_json, import_run
from explorer.store.database import Event, StoreWriter, TrajectoryStore
from explorer.store.export import export_zip, read_csv, run_tables

DREAM_MASK = 99


@pytest.fixture(scope="module")
def canvas_run(denoiser, tmp_path_factory) -> tuple[TrajectoryStore, int]:  # noqa: F811
    store = TrajectoryStore(f"sqlite:///{tmp_path_factory.mktemp('canvas') / 'runs.db'}")
    writer = StoreWriter(store, denoiser.token_text)
    run_decode(denoiser, PROMPT[0].tolist(), engine_config(denoiser, 0), [writer])
    return store, writer.run_id


@pytest.fixture(scope="module")
def canvas_bundle(canvas_run) -> dict:
    store, run_id = canvas_run
    return export_run(store, run_id)


def assert_same_arrays(a: RunArrays, b: RunArrays) -> None:
    for name in ("tokens", "argmax", "commit_step", "steps", "blocks", "n_committed", "commit_top_ids"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    for name in ("confidence", "entropy", "margin", "commit_prob", "commit_top_probs"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)  # NaN equals NaN here
    for name in ("step", "position", "token", "prob", "revised"):
        np.testing.assert_array_equal(getattr(a.commits, name), getattr(b.commits, name), err_msg=f"commits.{name}")
    np.testing.assert_array_equal(a.remasks.position, b.remasks.position)
    assert [e.to_json() for e in a.extras] == [e.to_json() for e in b.extras]


def without_ids(bundle: dict) -> dict:
    out = copy.deepcopy(bundle)
    out["run"].pop("parent_run_id", None)
    return out


# ---- a canvas run -------------------------------------------------------------------------------


def test_canvas_run_is_what_the_bundle_checks(canvas_run):
    store, run_id = canvas_run
    arrays = store.read_arrays(run_id)
    assert arrays.run["mask_id"] == VOCAB
    assert (arrays.argmax == -1).any() and arrays.extras[0].canvas is not None  # positions outside a canvas


def test_canvas_bundle_round_trip(canvas_run, canvas_bundle, db_url):
    store, run_id = canvas_run
    target = TrajectoryStore(db_url)
    data = export_run_json(store, run_id)
    new_id = import_run(target, data, vocab_size=VOCAB)
    assert_same_arrays(store.read_arrays(run_id), target.read_arrays(new_id))
    assert without_ids(export_run(target, new_id)) == without_ids(canvas_bundle)
    assert [s["extras"]["canvas"] for s in export_run(target, new_id)["steps"]] == [
        s["extras"]["canvas"] for s in canvas_bundle["steps"]
    ]
    target.engine.dispose()


def _bad(bundle: dict, edit) -> dict:
    out = copy.deepcopy(bundle)
    edit(out)
    return out


def _canvas(bundle: dict, step: int = 0) -> dict:
    return bundle["steps"][step]["extras"]["canvas"]


def _argmax(bundle: dict, value: int) -> None:
    import base64

    blob = bundle["steps"][0]["argmax"]
    values = np.frombuffer(base64.b64decode(blob["data"]), "<i4").copy()
    values[2] = value
    blob["data"] = base64.b64encode(values.tobytes()).decode("ascii")


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda b: _canvas(b)["sampled"].pop(), "step 0: extras.canvas: sampled has 7 entries for 8 canvas positions"),
        (lambda b: _canvas(b)["accepted"].append(1), "accepted has 9 entries for 8 canvas positions"),
        (
            lambda b: _canvas(b)["tokens_in"].__setitem__(3, VOCAB),
            f"step 0: extras.canvas: tokens_in[3]: token id {VOCAB} is outside the vocabulary of model "
            f"'tiny-gemma' (0..{VOCAB - 1})",
        ),
        (
            lambda b: _canvas(b)["sampled"].__setitem__(0, VOCAB + 7),
            f"sampled[0]: token id {VOCAB + 7} is outside the vocabulary",
        ),
        (lambda b: _canvas(b)["sampled_prob"].__setitem__(0, 1.5), "sampled_prob[0] 1.5 is over the limit of 1"),
        (lambda b: _canvas(b).__setitem__("start", 20), "extras.canvas: positions 20..27 (start 20, 8 canvas"),
        (lambda b: _canvas(b).pop("stop"), "step 0: extras.canvas: missing field stop"),
        (lambda b: _canvas(b)["noise_in"].__setitem__(0, 2), "noise_in[0]"),
        (lambda b: _argmax(b, -2), "position 2 holds token id -2, token ids are non-negative (-1: no logits"),
        (lambda b: _argmax(b, VOCAB), f"argmax blob: position[2]: token id {VOCAB} is outside the vocabulary"),
        (
            lambda b: b["run"].__setitem__("mask_id", VOCAB + 1),
            f"run: mask_id: token id {VOCAB + 1} is outside the vocabulary of model 'tiny-gemma' "
            f"(0..{VOCAB}; {VOCAB}: the noise marker)",
        ),
    ],
)
def test_malformed_canvas_bundle_refused_in_one_line(canvas_bundle, edit, words, tmp_path):
    target = TrajectoryStore(f"sqlite:///{tmp_path / 't.db'}")
    with pytest.raises(BundleError) as error:
        import_run(target, _bad(canvas_bundle, edit), vocab_size=VOCAB)
    message = str(error.value)
    assert words in message and "\n" not in message, message
    assert target.count_runs() == 0


def test_canvas_bundle_without_the_vocabulary_known(canvas_bundle, tmp_path):
    """A server that does not know the model checks only int32 ids: the noise marker passes too."""
    target = TrajectoryStore(f"sqlite:///{tmp_path / 't.db'}")
    new_id = import_run(target, canvas_bundle)
    assert target.read_arrays(new_id).run["mask_id"] == VOCAB


# ---- exports of a canvas run --------------------------------------------------------------------


def test_canvas_run_tables(canvas_run):
    store, run_id = canvas_run
    arrays = store.read_arrays(run_id)
    tables = run_tables(store, run_id)
    steps = tables["steps"].to_pydict()
    canvases = [e.canvas for e in arrays.extras]
    assert steps["canvas"] == [c.canvas for c in canvases] and steps["canvas_step"] == [c.step for c in canvases]
    assert steps["mean_entropy"] == pytest.approx([c.mean_entropy for c in canvases])
    assert steps["steps_stable"] == [c.steps_stable for c in canvases]
    assert steps["stop"] == [c.stop for c in canvases]
    assert steps["n_accepted"] == [int(c.accepted.sum()) for c in canvases]
    assert steps["n_renoised"] == [int(c.renoised.sum()) for c in canvases]
    positions = tables["positions"].to_pydict()
    assert -1 in positions["argmax"]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_canvas_run_exports(canvas_run, fmt):
    store, run_id = canvas_run
    with zipfile.ZipFile(io.BytesIO(export_zip(store, run_id, fmt))) as archive:
        data = {name.split("-")[-1].split(".")[0]: archive.read(name) for name in archive.namelist()}
    assert set(data) == {"steps", "positions", "events"}
    read = read_csv if fmt == "csv" else (lambda b: pq.read_table(io.BytesIO(b)))
    tables = {name: read(blob) for name, blob in data.items()}
    expected = run_tables(store, run_id)
    for name, table in tables.items():
        assert table.num_rows == expected[name].num_rows
    assert tables["steps"]["n_accepted"].to_pylist() == expected["steps"]["n_accepted"].to_pylist()
    assert tables["steps"]["stop"].to_pylist() == expected["steps"]["stop"].to_pylist()
    if fmt == "parquet":
        assert json.loads(pq.read_schema(io.BytesIO(data["steps"])).metadata[b"run"])["mask_id"] == VOCAB


# ---- recorded runs: unknown probabilities -------------------------------------------------------


def dream_output(*states: list[int]) -> SimpleNamespace:
    history = [torch.tensor([state]) for state in states]
    return SimpleNamespace(sequences=history[-1].clone(), history=history)


def _dream_run(store: TrajectoryStore) -> int:
    out = dream_output([7, 8, DREAM_MASK, 11, DREAM_MASK], [7, 8, 12, 11, DREAM_MASK], [7, 8, 12, DREAM_MASK, 14],
                       [7, 8, 12, 15, 16])  # fmt: skip
    return record_dream_history(store, out, torch.tensor([[7, 8]]), mask_id=DREAM_MASK)


def test_unknown_probabilities_stored_as_null_read_as_nan(db_url):
    store = TrajectoryStore(db_url)
    run_id = _dream_run(store)
    with store.session() as s:
        probs = s.scalars(Event.__table__.select().with_only_columns(Event.prob).where(Event.run_id == run_id)).all()
    assert probs and all(p is None for p in probs)
    arrays = store.read_arrays(run_id)
    committed = arrays.commit_step >= 0
    assert committed.any() and np.isnan(arrays.commit_prob[committed]).all()
    assert np.isnan(arrays.commits.prob).all()
    assert all(np.isnan(p) for step in store.step_summaries(run_id) for p in step["probs"])
    bundle = export_run(store, run_id)
    assert bundle["events"] and all(e["prob"] is None for e in bundle["events"])
    store.engine.dispose()


def test_recorded_dream_run_bundle_round_trip(db_url, tmp_path):
    source = TrajectoryStore(f"sqlite:///{tmp_path / 'source.db'}")
    run_id = _dream_run(source)
    target = TrajectoryStore(db_url)
    new_id = import_run(target, export_run_json(source, run_id), vocab_size=100)
    assert_same_arrays(source.read_arrays(run_id), target.read_arrays(new_id))
    assert without_ids(export_run(target, new_id)) == without_ids(export_run(source, run_id))
    target.engine.dispose()


def test_recorded_generate_run_without_logits_round_trip(model, tmp_path):  # noqa: F811
    source = TrajectoryStore(f"sqlite:///{tmp_path / 'source.db'}")
    streamer = RecordingStreamer(source, model, with_logits=False)
    torch.manual_seed(0)
    model.generate(PROMPT, streamer=streamer)
    arrays = source.read_arrays(streamer.run_id)
    assert arrays.run["mask_id"] == VOCAB and (arrays.argmax == -1).any()
    assert np.isnan(arrays.commit_prob[arrays.commit_step >= 0]).all()
    target = TrajectoryStore(f"sqlite:///{tmp_path / 'target.db'}")
    new_id = import_run(target, export_run_json(source, streamer.run_id), vocab_size=VOCAB)
    assert_same_arrays(arrays, target.read_arrays(new_id))
    assert without_ids(export_run(target, new_id)) == without_ids(export_run(source, streamer.run_id))


def test_unknown_probabilities_export_as_empty_and_null(tmp_path):
    store = TrajectoryStore(f"sqlite:///{tmp_path / 'runs.db'}")
    run_id = _dream_run(store)
    events = run_tables(store, run_id)["events"]
    assert events.num_rows and events["prob"].null_count == events.num_rows
    with zipfile.ZipFile(io.BytesIO(export_zip(store, run_id, "csv"))) as archive:
        text = archive.read(f"run-{run_id}-events.csv").decode("utf-8")
    assert "nan" not in text.lower()
    assert read_csv(text.encode())["prob"].null_count == events.num_rows
    with zipfile.ZipFile(io.BytesIO(export_zip(store, run_id, "parquet"))) as archive:
        table = pq.read_table(io.BytesIO(archive.read(f"run-{run_id}-events.parquet")))
    assert table["prob"].null_count == events.num_rows


def test_a_bundle_may_say_null_for_an_event_probability_only(tmp_path):
    store = TrajectoryStore(f"sqlite:///{tmp_path / 'runs.db'}")
    bundle = export_run(store, _dream_run(store))
    bad = copy.deepcopy(bundle)
    bad["events"][0]["top_probs"] = [None]
    bad["events"][0]["top_ids"] = [3]
    with pytest.raises(BundleError, match=r"^event 0: top_probs\[0\] must be a number, got null$"):
        import_run(store, bad)
    assert import_run(store, bundle) != 0
