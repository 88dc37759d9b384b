"""DiffusionGemma (a uniform-noise canvas model) in the Gradio app, over HTTP with gradio_client.

One server serves the module: the embedded model plus `tiny-gemma`, `fixtures_hf.build_gemma`'s tiny
random checkpoint, offered by an operator configuration file (as `--models-config` reads it). A run
on the model's own settings is stored with a canvas record every step and drawn with noise chips
and a draft line; settings a canvas model cannot run are refused in one line with nothing stored;
the embedded model still decodes in the same app.
"""

from __future__ import annotations

import json
import re

import pytest
from app_server import decode_args, running_app
from fixtures_hf import build_gemma
from gradio_client import Client

from explorer.adapters.registry import load_registry
from explorer.ui.logic import canvas_form_fields

pytestmark = pytest.mark.filterwarnings("ignore:::gradio.queueing")  # pandas deprecations inside gradio

GEMMA = "tiny-gemma"
RUN_LINE = re.compile(r"run (\d+) · (\w+)")
# What the form holds once the model is picked (ui/app.py model_changed): the checkpoint's own settings.
GEMMA_FORM = {"gen_length": 24, "steps": 18, "block_length": 8, "strategy": "eb", "eb_gamma": 1.0, "temperature": 0}
# The elements the token view is made of; any other tag would be a token's text let through unescaped.
HTML_TAGS = {"div", "span", "b", "i", "em", "strong", "small", "br", "template", "a", "code", "sup", "sub"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    parent = tmp_path_factory.mktemp("gemma_ui")
    entry = {"name": GEMMA, "family": "diffusion_gemma", "path": str(build_gemma(parent)), "device": "cpu"}
    config = parent / "models.json"
    config.write_text(json.dumps({"models": [{**entry, "dtype": "float32"}]}))
    with running_app(parent, registry=load_registry(config)) as (services, url):
        yield services, url


@pytest.fixture(scope="module")
def services(server):
    return server[0]


@pytest.fixture(scope="module")
def client(server):
    return Client(server[1], verbose=False)


def gemma_args(**overrides) -> list:
    return decode_args(**{"model": GEMMA, "violations": False, **GEMMA_FORM, **overrides})


def run_id_of(status_html: str) -> int:
    match = RUN_LINE.search(status_html)
    assert match and match.group(2) == "completed", status_html
    return int(match.group(1))


def foreign_tags(markup: str) -> set[str]:
    """Tag names in `markup` that are not the view's own elements (e.g. '<eos>' from a token)."""
    return {tag.lower() for tag in re.findall(r"</?([A-Za-z][\w-]*)", markup)} - HTML_TAGS


def test_the_form_values_are_the_models_own_settings(services):
    assert canvas_form_fields(services.models[GEMMA]) == GEMMA_FORM
    assert canvas_form_fields(services.models["embedded"]) is None  # the embedded model leaves the form alone


def test_decode_on_the_models_settings_is_stored_and_drawn_as_a_canvas_run(client, services):
    status, tokens = client.predict(*gemma_args(), api_name="/decode")[:2]
    run_id = run_id_of(status)
    run = services.store.get_run(run_id)
    assert (run["model"], run["status"], run["gen_length"]) == (GEMMA, "completed", 24)
    assert (run["config"]["strategy"], run["config"]["block_length"]) == ("eb", 8)
    arrays = services.store.read_arrays(run_id)
    assert 3 <= arrays.n_steps <= 18  # three canvases of at most six steps each
    assert all(extras.canvas is not None for extras in arrays.extras)

    # The last step: the canvas view with its legend, the draft line and every state for the player.
    assert 'class="tokens-view canvas-view' in tokens and "canvas-legend" in tokens, tokens[:500]
    assert 'class="gate-line canvas-draft"' in tokens and "draft (argmax) at step" in tokens
    assert '<template class="player-data">' in tokens
    assert not foreign_tags(tokens), foreign_tags(tokens)

    # A middle step, scrubbed in the same session: noise chips on the line, the step's draft below.
    middle = client.predict(arrays.n_steps // 2, "confidence", api_name="/scrub")[1]
    line = re.search(r'<div class="tokens-line">(.*?)</div>', middle, re.S).group(1)
    assert 'class="tok noise' in line, line
    assert "canvas-draft" in middle and not foreign_tags(middle), foreign_tags(middle)


REFUSALS = [
    pytest.param({"strategy": "margin"}, r"accepts with eb, low_confidence, threshold", id="margin"),
    pytest.param({"block_length": 4}, r"canvases of 8 tokens", id="block-4"),
    pytest.param({"temperature": 1.0}, r"linear schedule", id="temperature-1"),
    pytest.param({"violations": True}, r"violations: not available", id="violations"),
]


@pytest.mark.parametrize("settings, pattern", REFUSALS)
def test_a_setting_the_canvas_model_cannot_run_is_refused_and_nothing_is_stored(client, services, settings, pattern):
    runs_before = services.store.count_runs()
    with pytest.raises(Exception) as refused:
        client.predict(*gemma_args(**settings), api_name="/decode")
    assert type(refused.value).__name__ == "AppError"
    message = str(refused.value)
    assert re.search(pattern, message) and "\n" not in message.strip(), message
    assert services.store.count_runs() == runs_before
    assert services.pool.pending() == 0 and services.pool.busy() == 0


def test_the_embedded_model_still_decodes(client, services):
    status = client.predict(*decode_args(gen_length=16, steps=4), api_name="/decode")[0]
    run = services.store.get_run(run_id_of(status))
    assert (run["model"], run["status"], run["n_steps"]) == ("embedded", "completed", 4)
