"""Bounded resources and clear refusals (issue 13): the forward-pass estimate against measured
runs and the budget it enforces before a job is queued, the wall-clock budget in the worker, the
prompt cap and bounded unknown-word errors, run ids and whole numbers in the UI, deleting a run
that is decoding, and readable error texts for exceptions without a message."""

from __future__ import annotations

import time

import pytest
from test_worker import collect, kinds, n_step_rows, wait_idle

from explorer.api import decode
from explorer.decoding.config import DecodeConfig
from explorer.decoding.cost import estimated_passes
from explorer.decoding.engine import error_text
from explorer.presets import PRESETS
from explorer.services import Limits
from explorer.ui.logic import FORM_DEFAULTS, RequestError, as_int, build_config, check_budget, preset_form
from models.tokenizer import SHOWN_UNKNOWN, UnknownWordsError, WordTokenizer

PROMPT = "once upon a time"
CONFIGS = {
    "plain + violations": DecodeConfig(gen_length=32, steps=8, violations=True),
    "uni k8 S4": DecodeConfig(gen_length=32, steps=8, energies=(("uni", 1.0),), energy_candidates=8, energy_orders=4),
    "the issue's 46 s job": DecodeConfig(
        gen_length=64, steps=2, energies=(("uni", 1.0),), energy_candidates=16, energy_orders=8
    ),
    "ar, blocks": DecodeConfig(gen_length=32, steps=4, block_length=8, energies=(("ar", 1.0),), energy_candidates=4),
    "ar + uni + violations": DecodeConfig(
        gen_length=32,
        steps=8,
        energies=(("ar", 1.0), ("uni", 0.5)),
        energy_candidates=4,
        energy_orders=2,
        violations=True,
    ),
}


@pytest.fixture(scope="module")
def embedded():
    from explorer.adapters.loading import load_denoiser

    return load_denoiser("embedded")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_estimate_bounds_the_measured_passes(embedded, name):
    config = CONFIGS[name]
    out = decode(PROMPT, embedded, config, store=None)
    measured = sum(r.forward_passes for r in out.steps)
    estimate = estimated_passes(config)
    assert measured <= estimate <= 1.25 * measured + 8, (measured, estimate)


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    from explorer.services import Services

    services = Services.create(f"sqlite:///{tmp_path_factory.mktemp('limits') / 'l.db'}", threads=1)
    yield services
    services.close()


def _form(**overrides) -> dict:
    return {**FORM_DEFAULTS, "model": "embedded", "violations": True, **overrides}


def test_a_job_over_the_budget_is_refused_before_it_is_queued_with_the_estimate_named(services):
    form = _form(gen_length=64, steps=2, energy_terms=["uni"], energy_candidates=16, energy_orders=8)
    # 2 steps x (1 + 16 candidates + 16 x 8 x 31 chain sequences + 16 violation checks)
    with pytest.raises(RequestError, match=r"about 8,002 sequence forwards; this server allows 4,096 a run"):
        build_config(services, form)
    with pytest.raises(RequestError, match="allows 10 a run"):
        check_budget(CONFIGS["plain + violations"], 10)


def test_every_preset_is_within_the_default_budget(services):
    for preset in PRESETS:
        config = build_config(services, {**preset_form(preset, services), "prompt": PROMPT})
        assert estimated_passes(config) <= Limits().max_job_passes, preset.name


def test_a_long_prompt_is_refused_at_once_with_a_short_message(services):
    began = time.monotonic()
    with pytest.raises(RequestError) as refused:
        build_config(services, _form(prompt="zzq " * 250_000))  # 1 MB of unknown words
    assert time.monotonic() - began < 1.0
    assert "999,999 characters" in str(refused.value) and len(str(refused.value)) < 200


def test_unknown_words_are_named_a_few_at_a_time():
    tokenizer = WordTokenizer.from_grammar()
    text = " ".join(f"zzq{chr(97 + i % 26)}{'x' * (i % 60)}" for i in range(20_000))
    began = time.monotonic()
    with pytest.raises(UnknownWordsError) as refused:
        tokenizer.encode(text)
    message = str(refused.value)
    assert time.monotonic() - began < 2.0  # a close-match search for the few words named only
    assert len(message) < 600 and "more" in message and message.count("'zzq") == SHOWN_UNKNOWN
    assert tokenizer.encode("the cat") == [tokenizer.ids["the"], tokenizer.ids["cat"]]


@pytest.mark.parametrize("value", [3.5, float("nan"), "x", None, True])
def test_whole_numbers_are_not_rounded(value):
    with pytest.raises(RequestError, match="steps must be a whole number"):
        as_int("steps", value)
    assert as_int("steps", 4.0) == 4


@pytest.mark.parametrize(
    "exc, said",
    [
        (KeyboardInterrupt(), "interrupted (Ctrl-C)"),
        (EOFError(), "the connection to the app closed"),
        (ValueError("bad\nthing"), "ValueError: bad thing"),
        (RuntimeError(), "RuntimeError"),
    ],
)
def test_a_runs_error_text_is_one_readable_line(exc, said):
    assert error_text(exc) == said


# ---- the worker's wall-clock budget ------------------------------------------------------------------


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    from explorer.store.database import TrajectoryStore
    from explorer.worker import WorkerPool

    store = TrajectoryStore(f"sqlite:///{tmp_path_factory.mktemp('budget') / 'b.db'}")
    pool = WorkerPool(store.url, n_workers=1, threads=1)
    yield pool, store
    pool.shutdown()


def test_a_run_over_its_time_budget_ends_failed_with_its_steps(pool):
    pool, store = pool
    wait_idle(pool)
    handle = pool.submit(PROMPT, "embedded", DecodeConfig(gen_length=32, steps=32), pace_ms=100, max_seconds=0.5)
    events = collect(handle)
    assert kinds(events)[-1] == "error"
    message = events[-1][1]
    assert message.startswith("time budget: the run took") and "0.5 s a run" in message
    started = next(payload for kind, payload in events if kind == "started")
    run = store.get_run(started)
    assert run["status"] == "failed" and run["error"].startswith("time budget")
    assert 0 < n_step_rows(store, started) < 32


# ---- through the app --------------------------------------------------------------------------------


def test_the_app_refuses_to_delete_a_decoding_run_and_bad_run_ids(tmp_path):
    from app_server import decode_args, running_app
    from gradio_client import Client

    filters = ("any", "any", "any", "", "", "any", "")
    with running_app(tmp_path) as (services, url):
        client = Client(url, verbose=False)
        job = client.submit(*decode_args(gen_length=32, steps=32, pace_ms=200), api_name="/decode")
        deadline = time.monotonic() + 60
        running = []
        while not running and time.monotonic() < deadline:
            running = [r["id"] for r in services.store.list_runs() if r["status"] == "running"]
            time.sleep(0.1)
        assert running, "the decode did not start"
        with pytest.raises(Exception, match="is still decoding"):
            client.predict(running[0], running[0], *filters, api_name="/delete_run")
        assert services.store.get_run(running[0]) is not None
        job.result(timeout=120)
        for bad in (2**63, -1, 2.5):
            with pytest.raises(Exception, match="a run id is a whole number from 1 to"):
                client.predict(bad, "confidence", api_name="/open_run")
        # a fraction in an integer field is refused by name, not rounded
        for steps in (3.5, "abc"):  # text from an API client too: the field named, not a bare "Error"
            with pytest.raises(Exception, match="steps must be a whole number"):
                client.predict(*decode_args(steps=steps), api_name="/decode")


@pytest.mark.parametrize("strategy", ["lookahead", "lookahead_exact", "energy_gate", "pairwise_gate"])
def test_the_estimate_of_a_gated_run_is_of_the_measured_order(embedded, strategy):
    """A gated step commits a varying number of tokens, so the estimate (two a step) is of
    the measured order rather than a bound: within a factor of three either way here."""
    for violations in (False, True):
        config = DecodeConfig(gen_length=32, steps=32, strategy=strategy, violations=violations, temperature=1.0)
        out = decode(PROMPT, embedded, config, store=None)
        measured = sum(r.forward_passes for r in out.steps)
        estimate = estimated_passes(config)
        assert measured / 3 <= estimate <= 3 * measured, (measured, estimate)
