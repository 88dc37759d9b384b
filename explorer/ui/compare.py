"""The Compare tab: two runs side by side, aligned by position and by step, on the same colour
scales. One step slider moves both runs; positions whose tokens differ at that step are outlined.
A branch and its parent are the same run up to the branch step, so the outlines start there.
Run B can also be made here: run A's prompt, seed and settings decoded on another model (e.g. the
embedded MDLM against the embedded XDLM), optionally with another strategy."""

from __future__ import annotations

import html
from dataclasses import dataclass

import gradio as gr

from explorer.decoding.strategies import STRATEGIES
from explorer.jobs import JobDone, JobError, JobFailed, StepDone
from explorer.services import Services
from explorer.store.arrays import RunArrays
from explorer.ui.logic import (
    SAME_STRATEGY,
    ArraysCache,
    RequestError,
    differing_at,
    forward_passes,
    other_model,
    rerun_config,
    summarise,
    token_text_for,
)
from explorer.ui.view import status_html
from explorer.views import figures as plots
from explorer.views.tokens import render_tokens

# The outputs of /compare and /compare_step, in this order.
PAIR = ("summary", "tokens_a", "heat_a", "tokens_b", "heat_b")
# The outputs of /compare_other_model: the new run B, the slider, the pair, the status line.
OTHER = ("b_id", "step", *PAIR, "other_status")


@dataclass
class CompareTab:
    """The Compare tab's components by name, and what other tabs need to open a pair in it."""

    services: Services
    cache: ArraysCache
    components: dict[str, gr.components.Component]

    def outputs(self, *names: str) -> list:
        return [self.components[name] for name in names]

    def bind(self, shown: dict) -> dict:
        return {self.components[name]: value for name, value in shown.items()}

    def branch_pair(self, child_id, metric: str) -> dict:
        """A branch (B) and its parent (A), at the last step: {component: value}."""
        child = _load(self.cache, child_id, "B")
        parent = child.run.get("parent_run_id")
        if parent is None:
            raise gr.Error(f"run {child.run['id']} is not a branch: it has no parent to compare with")
        a = _load(self.cache, parent, "A (the parent; it may have been deleted)")
        last = max(a.n_steps, child.n_steps, 1) - 1  # the slider's step: marked on both maps
        shown = render_pair(self.services, a, child, metric or "confidence", last)
        return self.bind({**shown, "a_id": a.run["id"], "b_id": child.run["id"], "step": step_slider(a, child)})


def compare_tab(services: Services, cache: ArraysCache) -> CompareTab:
    gr.Markdown(
        "Two runs side by side (e.g. the same prompt and seed with different strategies or models, or a branch "
        "and its parent: press *Compare with parent* under a branch in the Decode tab). The step slider moves both "
        "runs; positions where their tokens differ at that step are outlined in red; both heatmaps share one "
        "colour scale."
    )
    c: dict = {}
    with gr.Row():
        c["a_id"] = gr.Number(label="Run A", precision=0, elem_id="compare-a")
        c["b_id"] = gr.Number(label="Run B", precision=0, elem_id="compare-b")
        c["metric"] = gr.Radio(list(COMPARE_MAPS), value="confidence", label="Heatmap", elem_id="compare-metric")
        go_btn = gr.Button("Compare", variant="primary", elem_id="compare-btn")
    other_btn = _other_model_row(services, c)
    c["step"] = gr.Slider(
        0, 1, value=0, step=1, label="Step (both runs: the state after this step)", elem_id="compare-step"
    )
    # The two texts right under the slider (what it moves), then the numbers, then the maps.
    with gr.Row():
        with gr.Column():
            gr.Markdown("**Run A**")
            c["tokens_a"] = gr.HTML(elem_id="compare-tokens-a")
        with gr.Column():
            gr.Markdown("**Run B**")
            c["tokens_b"] = gr.HTML(elem_id="compare-tokens-b")
    c["summary"] = gr.HTML(elem_id="compare-summary")
    with gr.Row():
        c["heat_a"] = gr.Plot(label="Run A: heatmap")
        c["heat_b"] = gr.Plot(label="Run B: heatmap")
    tab = CompareTab(services, cache, c)

    def compare(rid_a, rid_b, metric_v):
        a, b = _load(cache, rid_a, "A"), _load(cache, rid_b, "B")
        shown = render_pair(services, a, b, metric_v, None)
        return tuple(shown[name] for name in PAIR)

    def compare_at(rid_a, rid_b, metric_v, step):
        if not rid_a or not rid_b:  # ids start at 1: an empty field arrives as None or 0
            return (gr.skip(),) * len(PAIR)  # nothing compared yet: the slider alone does nothing
        a, b = _load(cache, rid_a, "A"), _load(cache, rid_b, "B")
        shown = render_pair(services, a, b, metric_v, int(step or 0))
        return tuple(shown[name] for name in PAIR)

    def reset_step(rid_a, rid_b):
        try:
            return step_slider(cache.get(int(rid_a)), cache.get(int(rid_b)))
        except (KeyError, TypeError, ValueError):
            return gr.skip()

    pair, inputs = tab.outputs(*PAIR), [c["a_id"], c["b_id"], c["metric"]]
    # /compare keeps its five outputs; the slider follows in a second event.
    go_btn.click(compare, inputs, pair, api_name="compare").then(
        reset_step, [c["a_id"], c["b_id"]], [c["step"]], api_name=False
    )
    gr.on(
        [c["step"].release, c["step"].input],
        compare_at,
        [*inputs, c["step"]],
        pair,
        api_name="compare_step",
        trigger_mode="always_last",
    )
    c["metric"].change(compare_at, [*inputs, c["step"]], pair, api_name=False)
    other = OtherModel(tab)
    other_btn.click(
        other.run,
        [c["a_id"], c["other_model"], c["other_strategy"], c["metric"]],
        tab.outputs(*OTHER),
        api_name="compare_other_model",
        show_progress_on=[c["other_status"]],
    )
    c["a_id"].change(other.suggest, [c["a_id"]], [c["other_model"]], api_name=False)
    return tab


OTHER_NOTE = (
    "**Or make run B here**: run A's prompt, seed and settings decoded on another model "
    "(e.g. *embedded* against *embedded-xdlm*), with A's strategy or another one."
)


def _other_model_row(services: Services, c: dict) -> gr.Button:
    """The "decode run A on another model" controls (hidden on a replay-only server); its button."""
    shown = services.pool is not None
    models = list(services.models)
    gr.Markdown(OTHER_NOTE, visible=shown, elem_id="compare-other-note")
    with gr.Row(equal_height=True, visible=shown):
        c["other_model"] = gr.Dropdown(
            models, value=other_model(services, None), label="Model for B", elem_id="compare-other-model"
        )
        c["other_strategy"] = gr.Dropdown(
            [SAME_STRATEGY, *STRATEGIES], value=SAME_STRATEGY, label="Strategy for B", elem_id="compare-other-strategy"
        )
        button = gr.Button("Decode run A on this model as run B", elem_id="compare-other-btn")
    c["other_status"] = gr.HTML(elem_id="compare-other-status", visible=shown)
    return button


@dataclass
class OtherModel:
    """The handlers of "decode run A on another model": a new run B, then the pair compared."""

    tab: CompareTab

    def suggest(self, rid_a):
        """When run A is picked, offer the first model that is not A's."""
        run = self.tab.services.store.get_run(int(rid_a)) if rid_a else None
        if run is None:
            return gr.skip()
        return gr.Dropdown(value=other_model(self.tab.services, run["model"]) or run["model"])

    def run(self, rid_a, model, strategy, metric):
        services, bind = self.tab.services, self.tab.bind
        a = _load(self.tab.cache, rid_a, "A")
        model = model or other_model(services, a.run["model"])
        try:
            config = rerun_config(services, a.run, model, strategy)
            handle = services.pool.submit(a.run["prompt"], model, config)
        except (RequestError, RuntimeError) as exc:
            raise gr.Error(str(exc)) from None
        what = f"Decoding run {a.run['id']}'s prompt (seed {config.seed}, {config.strategy}) on {model}"
        yield bind({"other_status": status_html("busy", what + "…")})
        steps = 0
        for event in handle.iter_events():
            match event:
                case StepDone():
                    steps += 1
                    yield bind({"other_status": status_html("busy", f"{what}… step {steps}")})
                case JobDone(result=result):
                    b = self.tab.cache.get(int(result.run_id))
                    shown = render_pair(services, a, b, metric or "confidence", None)
                    done = f"Run {b.run['id']}: run {a.run['id']}'s prompt and seed on {model} ({config.strategy})."
                    yield bind(
                        {
                            **shown,
                            "b_id": b.run["id"],
                            "step": step_slider(a, b),
                            "other_status": status_html("ok", done),
                        }
                    )
                case JobError(message=message) | JobFailed(message=message):
                    raise gr.Error(f"the run on {model} ended with an error: {message}")


def step_slider(a: RunArrays, b: RunArrays) -> gr.Slider:
    """One slider over both runs' steps, on the last step."""
    last = max(a.n_steps, b.n_steps, 1) - 1
    return gr.Slider(0, max(last, 1), value=last, step=1, interactive=True)


def render_pair(services: Services, a: RunArrays, b: RunArrays, metric: str, step: int | None) -> dict:
    """Both runs after `step` (None: the end; a run with fewer steps shows its last state):
    the summary, both token views with the differing positions outlined, both heatmaps."""
    since = branch_step_between(a, b)
    differ = differing_at(a, b, step, since=-1 if since is None else since)
    views = [
        render_tokens(
            r, token_text_for(services, r), _own_step(r, step), r.run["prompt"], highlight=differ, outline_step=False
        )
        for r in (a, b)
    ]
    texts = (token_text_for(services, a), token_text_for(services, b))
    figures = COMPARE_MAPS[metric](a, b, step, texts)
    return {
        "summary": _summary_table(services, a, b, differ, step, since),
        "tokens_a": views[0],
        "heat_a": figures[0],
        "tokens_b": views[1],
        "heat_b": figures[1],
    }


def branch_step_between(a: RunArrays, b: RunArrays) -> int | None:
    """The branch step when one run is a branch of the other, else None."""
    for child, parent in ((b, a), (a, b)):
        if child.run.get("parent_run_id") is not None and child.run.get("parent_run_id") == parent.run.get("id"):
            return int(child.run["branch_step"])
    return None


def _own_step(arrays: RunArrays, step: int | None) -> int | None:
    return None if step is None else min(step, max(arrays.n_steps - 1, 0))


def _load(cache: ArraysCache, rid, label: str) -> RunArrays:
    if not rid:  # ids start at 1: an empty field arrives as None or 0
        raise gr.Error(f"give the id of run {label}")
    try:
        return cache.get(int(rid))
    except KeyError:
        raise gr.Error(f"there is no run with id {int(rid)} (run {label})") from None


def _metric_pair(metric: str):
    def draw(a, b, step=None, texts=(None, None)):
        zmax = plots.common_zmax(metric, a, b)
        return [plots.metric_heatmap(r, metric, zmax=zmax, step=_own_step(r, step)) for r in (a, b)]

    return draw


def _nats_pair(name: str, figure):
    def draw(a, b, step=None, texts=(None, None)):
        bound = plots.common_bound(name, a, b)
        return [figure(r, bound=bound, step=_own_step(r, step)) for r in (a, b)]

    return draw


def _changes_pair(a, b, step=None, texts=(None, None)):
    """Both runs' changes maps (one fixed colour per event, so they compare as they are)."""
    return [plots.changes_map(r, step=_own_step(r, step), token_text=t) for r, t in zip((a, b), texts)]


# The Heatmap choices of the Compare tab: each draws both runs on one colour scale. `texts`: each
# run's token id -> text, for the hovers that name tokens.
COMPARE_MAPS = {
    **{m: _metric_pair(m) for m in ("confidence", "entropy", "margin")},
    "violations": _nats_pair("violation", plots.violation_heatmap),
    "energy": _nats_pair("energy", plots.energy_heatmap),
    "changes": _changes_pair,
}


def _summary_table(
    services: Services, a: RunArrays, b: RunArrays, differ: set[int], step: int | None, since: int | None
) -> str:
    rows = []
    sa = summarise(a, f"{a.run['prompt']} {a.run['final_text'] or ''}", a.run["model"])
    sb = summarise(b, f"{b.run['prompt']} {b.run['final_text'] or ''}", b.run["model"])
    fields = [
        ("run", sa.run_id, sb.run_id),
        ("branch of", _origin(a), _origin(b)),
        ("model", a.run["model"], b.run["model"]),
        ("strategy", a.run["strategy"], b.run["strategy"]),
        ("prompt · seed", _prompt_seed(a), _prompt_seed(b)),
        ("status", sa.status, sb.status),
        ("checker", sa.verdict or "n/a", sb.verdict or "n/a"),
        ("violations: Σ S < 0 (nats)", _violation_total(a), _violation_total(b)),
        ("revisions", sa.revisions, sb.revisions),
        ("AR-ness τ (by last change)", f"{sa.arness:+.2f}", f"{sb.arness:+.2f}"),
        ("forward passes", _passes(services, a), _passes(services, b)),
        ("steps", sa.n_steps, sb.n_steps),
        ("tokens / step", f"{sa.committed / max(sa.n_steps, 1):.2f}", f"{sb.committed / max(sb.n_steps, 1):.2f}"),
        ("mean p at commit", f"{sa.mean_commit_prob:.3f}", f"{sb.mean_commit_prob:.3f}"),
        ("energies", _energies_text(a), _energies_text(b)),
    ]
    for name, va, vb in fields:
        rows.append(
            f"<tr><th>{html.escape(str(name))}</th><td>{html.escape(str(va))}</td><td>{html.escape(str(vb))}</td></tr>"
        )
    where = "in the final text" if step is None else f"after step {step}"
    note = f"{len(differ)} position(s) differ {where}."
    if since is not None:
        note += (
            f" One run is a branch of the other after step {since}: up to step {since} they are the same run "
            f"(its steps were copied), so the outlines start at step {since}, where the branch's edit took effect."
        )
    table = f'<table class="compare"><tr><th></th><th>A</th><th>B</th></tr>{"".join(rows)}</table>'
    return f'<p class="compare-note">{html.escape(note)}</p>{table}'


def _prompt_seed(arrays: RunArrays) -> str:
    return f"{arrays.run.get('prompt', '')} · seed {arrays.run.get('seed')}"


def _origin(arrays: RunArrays) -> str:
    parent = arrays.run.get("parent_run_id")
    return "-" if parent is None else f"run {parent} after step {arrays.run.get('branch_step')}"


def _passes(services: Services, arrays: RunArrays) -> str:
    total, own = forward_passes(services, int(arrays.run["id"]))
    if arrays.run.get("parent_run_id") is None:
        return str(total)
    return f"{total} ({own} after step {arrays.run.get('branch_step')})"


def _energies_text(arrays) -> str:
    return plots.energy_terms_text(arrays.run.get("config") or {}, "off", escape=False)  # the table escapes


def _violation_total(arrays) -> str:
    """The run's summed violation (negative parts of S over the co-committed pairs of every step)."""
    totals = [e.violations.total for e in arrays.extras if e.violations is not None]
    return f"{sum(totals):+.2f}" if totals else "not measured"
