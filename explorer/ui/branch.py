"""The Decode tab's branch panel: pick a token of a shown run, change it, decode the rest again.

Clicking (tapping) a token of a finished run opens the panel for that position at the step on
the slider (`logic.branch_step_for`). From there a branch (a new stored run that starts from the
exact state after that step) is started with one of the model's stored top choices, any word,
the position re-masked, or no edit and the Decode form's settings; it streams into the Decode
view like any run (`_DecodeHandlers.stream`). The "Which decision mattered?" analysis re-decodes
the run once per top-N token there and lists what became of each.

The model runs in the worker: this module builds the `BranchRequest` and streams the events;
what the panel says (its head, the stored choices, the analysis table) is in `branch_markup.py`.
"""

from __future__ import annotations

import html
from collections.abc import Iterator

import gradio as gr

from explorer.branching.alternatives import MAX_TOP
from explorer.branching.edits import EditSpec, Force, Remask, parse_token
from explorer.branching.plan import BranchRequest
from explorer.jobs import AlternativesDone, JobError, JobFailed, OutcomeDone, Queued
from explorer.services import Services
from explorer.store.arrays import RunArrays
from explorer.ui.branch_markup import ALT_COLUMNS, outcome_row, outcome_table, panel_head, stored_choices
from explorer.ui.compare import CompareTab
from explorer.ui.logic import (
    DECODE_FIELDS,
    ArraysCache,
    RequestError,
    as_int,
    branch_step_for,
    build_config,
    changed_settings,
    token_text_for,
)
from explorer.ui.toasts import inform, refuse, warn
from explorer.ui.view import DecodeView, status_html
from explorer.views.outcomes import alternatives_figure
from explorer.views.tokens import state_at

N_ALTERNATIVES = 3  # buttons for the stored top choices (the store keeps 3 per commit)
ACTIONS_NOTE = (
    "**Re-mask and continue**: turn this position back into a mask and let the model decode it again with the rest. "
    "**Continue with other settings**: no edit; the rest is decoded with the settings now in the form on the left "
    "(strategy, steps, temperature, seed, …; the generation length must stay the same)."
)
ALTERNATIVES_NOTE = (
    "Re-decodes the run from this step once per token among the model's N most probable at this position "
    "(and once as decoded), each as a stored branch. The table and the bars say what became of the text: the "
    "story checker's verdict, the summed dependency-violation score of the later steps (0 = no conflict) and, "
    "where an autoregressive model is paired, its NLL."
)
REPLAY_ONLY_BRANCH = (
    "this server is replay-only: it runs no model, so it cannot branch. Branch on a server that runs models."
)


def branch_panel(services: Services) -> dict:
    """Lay out the panel (hidden until a token is clicked); {name: component}."""
    p: dict = {}
    with gr.Column(visible=False, variant="panel", elem_id="branch-panel") as p["panel"]:
        p["head"] = gr.HTML(elem_id="branch-head")
        p["alt_note"] = gr.Markdown(elem_classes=["branch-note"], elem_id="branch-alt-note")
        with gr.Row(elem_id="branch-alts"):
            for i in range(N_ALTERNATIVES):
                p[f"alt_{i}"] = gr.Button(
                    visible=False, scale=0, min_width=160, elem_id=f"branch-alt-{i}", elem_classes=["branch-alt"]
                )
        with gr.Row(equal_height=True):
            p["word"] = gr.Textbox(
                label="Or type any word (or #id)", placeholder="e.g. boy", elem_id="branch-word", scale=2, min_width=140
            )
            p["force"] = gr.Button("Branch with this token", variant="primary", elem_id="branch-force", min_width=150)
        with gr.Row():
            p["remask"] = gr.Button("Re-mask and continue", elem_id="branch-remask", min_width=150)
            p["settings"] = gr.Button("Continue with other settings", elem_id="branch-settings", min_width=150)
        gr.Markdown(ACTIONS_NOTE, elem_classes=["branch-note"])
        # What the head describes, editable: the API's inputs too (the head follows a typed value).
        with gr.Accordion("Run, step and position (type to choose another)", open=False, elem_id="branch-where"):
            with gr.Row():
                p["run"] = gr.Number(label="Run", precision=0, interactive=False, elem_id="branch-run", min_width=70)
                p["step"] = gr.Number(
                    label="Branch after step (-1 = from the prompt)", precision=0, elem_id="branch-step", min_width=110
                )
                p["position"] = gr.Number(label="Position", precision=0, elem_id="branch-position", min_width=80)
        with gr.Accordion(
            "Which decision mattered? Try the model's top tokens here", open=False, elem_id="alternatives"
        ):
            gr.Markdown(ALTERNATIVES_NOTE, elem_classes=["branch-note"])
            with gr.Row(equal_height=True):
                p["top"] = gr.Number(
                    5, label=f"Top-N tokens (1..{MAX_TOP})", precision=0, elem_id="alt-top", min_width=120
                )
                p["analyse"] = gr.Button("Run analysis", elem_id="alt-run", min_width=120)
            p["alt_status"] = gr.HTML(elem_id="alt-status")
            p["alt_table"] = gr.Dataframe(
                headers=ALT_COLUMNS,
                interactive=False,
                wrap=True,
                elem_id="alt-table",
                max_height=320,
                column_widths=["14%", "7%", "7%", "20%", "14%", "12%", "26%"],
            )
            p["alt_plot"] = gr.Plot(label="Outcome per alternative", elem_id="alt-plot")
            with gr.Row(equal_height=True):
                p["alt_pick"] = gr.Dropdown(
                    [],
                    label="A run of the analysis (or click a table row)",
                    allow_custom_value=True,
                    elem_id="alt-pick",
                )
                p["alt_open"] = gr.Button("Open in Decode", elem_id="alt-open", min_width=120)
                p["alt_compare"] = gr.Button("Compare with parent", elem_id="alt-compare", min_width=120)
    p["alt_tokens"] = gr.State([])  # the token ids behind the alternative buttons
    return p


class BranchHandlers:
    """The branch panel's handlers over one app's services (no module state)."""

    def __init__(
        self, services: Services, cache: ArraysCache, view: DecodeView, controls: dict, decode, panel: dict
    ) -> None:
        self.services, self.cache, self.view, self.controls = services, cache, view, controls
        self.decode, self.panel = decode, panel  # decode: the Decode tab's handlers (their `stream`)

    def bind(self, shown: dict) -> dict:
        """{name: value} over the view's and the panel's names -> {component: value}."""
        return {(self.panel.get(name) or self.view.components[name]): value for name, value in shown.items()}

    # ---- picking a token -------------------------------------------------------------------
    def pick(self, step, run_id, evt: gr.EventData):
        """A token was clicked: open the panel on it at the slider's step."""
        if run_id is None or getattr(evt, "_data", None) is None or evt._data.get("run") != run_id:
            return {}  # a live run without its id yet, or a stale view
        if self.services.pool is None:
            inform(REPLAY_ONLY_BRANCH[0].upper() + REPLAY_ONLY_BRANCH[1:])
            return {}
        arrays = self.cache.get(int(run_id))
        if arrays.run["status"] == "running":
            inform("This run is still decoding: branch it once it has finished.")
            return {}
        position = int(evt.position)
        if not 0 <= position < arrays.gen_length:
            return {}
        shown = evt._data.get("step", step)  # the step the page's player shows (the slider: API callers)
        return self._opened(arrays, int(shown or 0), position)

    def follow(self, step, run_id, panel_run, position):
        """The slider moved: the panel (open on this run) follows it to the new step."""
        if run_id is None or panel_run is None or position is None or int(panel_run) != int(run_id):
            return {}
        arrays = self.cache.get(int(run_id))
        if not 0 <= int(position) < arrays.gen_length:
            return {}
        k = branch_step_for(arrays, int(step or 0), int(position))
        return self.bind({"step": k, **self._selection(arrays, k, int(position), int(step or 0))})

    def follow_player(self, run_id, panel_run, position, evt: gr.EventData):
        """The page's player came to rest on a step: the panel follows it, as it follows the slider."""
        data = getattr(evt, "_data", None) or {}
        if data.get("run") != run_id:
            return self.bind({"step": gr.skip()})
        return self.follow(data.get("step", 0), run_id, panel_run, position) or self.bind({"step": gr.skip()})

    def retarget(self, run_id, step, position):
        """The step or the position was typed: the panel describes the new choice."""
        try:
            arrays = self.cache.get(as_int("run", run_id))
            k, p = as_int("step", step), as_int("position", position)
        except (RequestError, KeyError):
            return {}
        if not (-1 <= k < arrays.n_steps and 0 <= p < arrays.gen_length):
            message = (
                f"Run {arrays.run['id']} has steps -1..{arrays.n_steps - 1} (-1 = from the prompt) "
                f"and positions 0..{arrays.gen_length - 1}."
            )
            return self.bind({"head": f'<div class="branch-head warn">{html.escape(message)}</div>'})
        return self.bind(self._selection(arrays, k, p, k))

    def hide_if_other_run(self, run_id, panel_run):
        """Another run is shown (or one streams): the panel's choice belonged to the old one."""
        if run_id is not None and panel_run is not None and int(run_id) == int(panel_run):
            return {}
        return self.bind({"panel": gr.Column(visible=False)})

    def _opened(self, arrays: RunArrays, step: int, position: int) -> dict:
        k = branch_step_for(arrays, step, position)
        return self.bind(
            {
                "panel": gr.Column(visible=True),
                "run": int(arrays.run["id"]),
                "step": k,
                "position": position,
                "word": "",
                "alt_status": "",
                "alt_table": outcome_table([]),
                "alt_plot": alternatives_figure([], k, position),
                "alt_pick": gr.Dropdown(choices=[], value=None),
                **self._selection(arrays, k, position, step),
            }
        )

    def _selection(self, arrays: RunArrays, k: int, position: int, slider_step: int) -> dict:
        """What the panel says of (k, position): the head, the stored top choices as buttons, and
        whether the position can be re-masked (it holds a token after step k)."""
        token_text = token_text_for(self.services, arrays)
        state = state_at(arrays, k)
        committed = bool(state.since[position] >= 0)
        head = panel_head(arrays, k, position, token_text, moved_from=slider_step if k != slider_step else None)
        note, choices = stored_choices(arrays, position, int(state.tokens[position]) if committed else None, token_text)
        buttons = {f"alt_{i}": gr.Button(visible=False) for i in range(len(choices), N_ALTERNATIVES)}
        for i, (token, prob) in enumerate(choices):
            buttons[f"alt_{i}"] = gr.Button(value=f"{token_text(token)}  (p = {prob:.2f})", visible=True)
        return {
            "head": head,
            "alt_note": note,
            **buttons,
            "alt_tokens": [t for t, _ in choices],
            "remask": gr.Button(interactive=committed),
        }

    # ---- branching -------------------------------------------------------------------------
    def branch_word(self, run_id, step, position, word, metric, pace):
        """Branch with the word typed (or '#id') at the position."""
        text = (word or "").strip()
        if not text:
            raise refuse("type a word (or #id) to put at this position, or click one of the model's choices")
        yield from self._branch(run_id, step, (Force(_position(position), parse_token(text)),), {}, metric, pace)

    def branch_choice(self, index: int):
        """Branch with the index-th stored top choice (a token id: exact, whatever its text)."""

        def handler(tokens, run_id, step, position, metric, pace):
            if index >= len(tokens or []):
                return
            edit = Force(_position(position), int(tokens[index]))
            yield from self._branch(run_id, step, (edit,), {}, metric, pace)

        return handler

    def branch_remask(self, run_id, step, position, metric, pace):
        yield from self._branch(run_id, step, (Remask(_position(position)),), {}, metric, pace)

    def branch_settings(self, run_id, step, *values):
        """No edit; the rest decoded with the Decode form's settings (those that differ from the parent's)."""
        form = dict(zip(DECODE_FIELDS, values))
        parent = self._parent(run_id)
        try:
            config = build_config(self.services, {**form, "prompt": parent["prompt"], "model": parent["model"]})
        except RequestError as exc:
            raise refuse(str(exc)) from None
        if config.gen_length != parent["gen_length"]:
            length = parent["gen_length"]
            raise refuse(
                f"the form's generation length is {config.gen_length}, run {parent['id']}'s is {length}: "
                f"a branch keeps its parent's generation length (set it to {length})"
            )
        settings = changed_settings(parent["config"], config)
        if not settings:
            inform(f"The form holds run {parent['id']}'s own settings: this branch repeats it from the step on.")
        yield from self._branch(run_id, step, (), settings, form["metric"], form["pace_ms"])

    def _branch(self, run_id, step, edits: tuple[EditSpec, ...], settings: dict, metric, pace) -> Iterator[dict]:
        """Submit the branch (checks that need no model happen here; the worker checks the rest
        and refuses with a JobError that names the problem) and stream it into the Decode view."""
        parent = self._parent(run_id)
        try:
            request = BranchRequest(int(parent["id"]), as_int("step", step), edits, settings)
            pace_ms = min(max(int(pace or 0), 0), self.services.limits.max_pace_ms)
            handle = self.services.pool.submit_branch(
                parent["model"], request, pace_ms=pace_ms, max_seconds=self.services.limits.max_job_seconds
            )
        except (RequestError, RuntimeError) as exc:
            raise refuse(str(exc)) from None
        yield self.bind({"panel": gr.Column(visible=False)})
        run = {
            "id": None,
            "status": "running",
            **{key: parent[key] for key in ("model", "gen_length", "mask_id", "prompt")},
        }
        yield from self.decode.stream(handle, run, metric or "confidence", parent=int(parent["id"]))

    def _parent(self, run_id) -> dict:
        """The run to branch, checked: it exists, it has ended, its model is offered here."""
        if self.services.pool is None:
            raise refuse(REPLAY_ONLY_BRANCH)
        try:
            rid = as_int("run", run_id)
        except RequestError:
            raise refuse("pick a run first: click a token of a finished run in the Decode tab") from None
        run = self.services.store.get_run(rid)
        if run is None:
            raise refuse(f"there is no run with id {rid}")
        if run["status"] == "running":
            raise refuse(f"run {rid} is still running: branch it once it has finished")
        if run["model"] not in self.services.models:
            raise refuse(
                f"run {rid} was decoded by model {run['model']!r}, which this server does not run; "
                f"offered here: {', '.join(self.services.models)}"
            )
        return run

    # ---- which decision mattered? ----------------------------------------------------------
    def alternatives(self, run_id, step, position, top):
        parent = self._parent(run_id)
        try:
            k, p, n = as_int("step", step), as_int("position", position), as_int("top-N", top)
            if not 1 <= n <= MAX_TOP:
                raise RequestError(f"top-N {n} is out of range; valid: 1..{MAX_TOP}")
            handle = self.services.pool.submit_alternatives(parent["model"], int(parent["id"]), k, p, n)
        except (RequestError, RuntimeError) as exc:
            raise refuse(str(exc)) from None
        rows: list[dict] = []
        yield self.bind(
            {
                "alt_status": status_html("busy", "Queued…"),
                "alt_table": outcome_table([]),
                "alt_plot": alternatives_figure([], k, p),
                "alt_pick": gr.Dropdown(choices=[], value=None),
            }
        )
        for event in handle.iter_events():
            match event:
                case Queued(ahead=ahead) if ahead:
                    yield self.bind(
                        {"alt_status": status_html("busy", f"Waiting for the worker: {ahead} job(s) ahead")}
                    )
                case OutcomeDone(outcome=outcome):
                    rows.append(outcome_row(outcome))
                    line = f"Re-decoding after step {k}: {len(rows)} alternative(s) done…"
                    yield self._alt_frame(rows, k, p, status_html("busy", line))
                case AlternativesDone(report=report):
                    line = (
                        f"Done: {len(rows)} re-decodes of run {report.run_id} after step {k} at position {p} "
                        f"(it held '{report.parent_token}'); each is a stored branch. Green = a valid story."
                    )
                    yield self._alt_frame(rows, k, p, status_html("ok", line))
                case JobError(message=message) | JobFailed(message=message):
                    warn(f"The analysis ended with an error: {message}")
                    yield self._alt_frame(
                        rows, k, p, status_html("error", f"The analysis ended with an error: {message}")
                    )

    def _alt_frame(self, rows: list[dict], k: int, p: int, status: str) -> dict:
        choices = [
            (f"run {row['run']} · '{row['token']}'" + (" (as decoded)" if row["as_decoded"] else ""), row["run"])
            for row in rows
        ]
        return self.bind(
            {
                "alt_status": status,
                "alt_table": outcome_table(rows),
                "alt_plot": alternatives_figure(rows, k, p),
                "alt_pick": gr.Dropdown(choices=choices, value=choices[0][1] if choices else None),
            }
        )

    def pick_row(self, evt: gr.SelectData, rows):
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        value = rows.iloc[row, 2] if hasattr(rows, "iloc") else rows[row][2]
        return int(value)

    # ---- opening runs ----------------------------------------------------------------------
    def open_run(self, run_id, metric):
        try:
            rid = as_int("run", run_id)
            self.cache.get(rid)
        except (RequestError, KeyError):
            raise refuse("pick a run of the analysis first (the dropdown, or click a table row)") from None
        return self.view.stored(self.services, self.cache, rid, metric)

    def open_parent(self, run_id, metric):
        run = self.services.store.get_run(int(run_id)) if run_id is not None else None
        if run is None or run.get("parent_run_id") is None:
            raise refuse("the run shown is not a branch")
        return self.open_run(run["parent_run_id"], metric)


def _position(value) -> int:
    """A position from the panel or an API call; its range is the worker's check."""
    try:
        return as_int("position", value)
    except RequestError as exc:
        raise refuse(f"{exc} (click a token to pick one)") from None


# The panel's outputs when it opens on a token, and when it only re-describes its choice.
DESCRIBE = ("head", "alt_note", *(f"alt_{i}" for i in range(N_ALTERNATIVES)), "alt_tokens", "remask")
OPEN = ("panel", "run", "step", "position", "word", "alt_status", "alt_table", "alt_plot", "alt_pick", *DESCRIBE)


def wire_branching(h: BranchHandlers, tabs: gr.Tabs, compare: CompareTab) -> None:
    """The panel's events (once every tab exists: a branch's Compare opens the Compare tab)."""
    p, v, c = h.panel, h.view.components, h.controls
    chosen = [p["run"], p["step"], p["position"]]
    shown = [p[name] for name in DESCRIBE]
    v["tokens"].click(h.pick, [v["slider"], v["run_state"]], [p[name] for name in OPEN], api_name=False)
    v["tokens"].input(
        h.follow_player,
        [v["run_state"], p["run"], p["position"]],
        [p["step"], *shown],
        api_name=False,
        trigger_mode="always_last",
        show_progress="hidden",
    )
    gr.on(
        [v["slider"].release, v["slider"].input],
        h.follow,
        [v["slider"], v["run_state"], p["run"], p["position"]],
        [p["step"], *shown],
        api_name=False,
        trigger_mode="always_last",
    )
    gr.on([p["step"].input, p["position"].input], h.retarget, chosen, shown, api_name=False, trigger_mode="always_last")
    v["run_state"].change(h.hide_if_other_run, [v["run_state"], p["run"]], [p["panel"]], api_name=False)

    # A branch streams into the Decode view like a run (progress on the status line only).
    streams = [*h.view.outputs("slider", "run_state", "job_state"), p["panel"]]
    live = dict(concurrency_limit=None, show_progress_on=[v["status"]])
    look = [v["metric"], c["pace_ms"]]
    p["force"].click(h.branch_word, [*chosen, p["word"], *look], streams, api_name="branch", **live)
    p["word"].submit(h.branch_word, [*chosen, p["word"], *look], streams, api_name=False, **live)
    for i in range(N_ALTERNATIVES):
        p[f"alt_{i}"].click(h.branch_choice(i), [p["alt_tokens"], *chosen, *look], streams, api_name=False, **live)
    p["remask"].click(h.branch_remask, [*chosen, *look], streams, api_name="branch_remask", **live)
    form = [c[name] for name in DECODE_FIELDS]
    p["settings"].click(h.branch_settings, [p["run"], p["step"], *form], streams, api_name="branch_settings", **live)

    analysis = [p["alt_status"], p["alt_table"], p["alt_plot"], p["alt_pick"]]
    p["analyse"].click(
        h.alternatives,
        [*chosen, p["top"]],
        analysis,
        api_name="alternatives",
        concurrency_limit=None,
        show_progress_on=[p["alt_status"]],
    )
    p["alt_table"].select(h.pick_row, [p["alt_table"]], [p["alt_pick"]], api_name=False)
    opened = h.view.outputs("slider", "run_state")
    p["alt_open"].click(h.open_run, [p["alt_pick"], v["metric"]], opened, api_name="open_branch")
    v["open_parent"].click(h.open_parent, [v["run_state"], v["metric"]], opened, api_name=False)

    def compare_branch(run_id, metric):
        return {**compare.branch_pair(run_id, metric), tabs: gr.Tabs(selected="compare")}

    pair = [*compare.permalink_outputs(), tabs]
    metric = compare.components["metric"]
    p["alt_compare"].click(compare_branch, [p["alt_pick"], metric], pair, api_name="compare_branch")
    v["compare_parent"].click(compare_branch, [v["run_state"], metric], pair, api_name=False)
