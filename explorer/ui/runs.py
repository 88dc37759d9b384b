"""The Runs tab: stored runs with filters; open (the run and its settings), delete (confirmed),
tags and a note per run, export (JSON bundle, CSV, Parquet) and import."""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
from pathlib import Path

import gradio as gr

from explorer.branching.alternatives import CHECKED_MODELS
from explorer.decoding.strategies import STRATEGIES
from explorer.services import Services
from explorer.store.bundle import BundleError, bundle_json, export_run_json, export_tree, import_bundle
from explorer.store.database import STATUSES
from explorer.store.export import export_zip
from explorer.ui.form import RUN_FIELDS, PresetMatcher, changed_since, opened_state, wire_changed_since
from explorer.ui.logic import ArraysCache, run_tree
from explorer.ui.toasts import refuse
from explorer.ui.view import DecodeView, status_html
from explorer.views.verdict import verdict_of

ANY = "any"
VERDICTS = (ANY, "valid", "invalid")
COLUMNS = [
    "id",
    "parent",
    "branch step",
    "status",
    "model",
    "strategy",
    "verdict",
    "violations",
    "tags",
    "prompt",
    "text",
    "created (UTC)",
    "length",
    "steps",
    "tokens/step",
    "temperature",
    "seed",
    "energies",
    "preset",
]
# Pixel widths: the table scrolls sideways on a narrow page instead of squeezing every header
# into a column of single letters; what people read first (verdict, tags, prompt, text) comes first.
COLUMN_WIDTHS = [
    "56px", "72px", "72px", "96px", "110px", "124px", "180px", "92px", "130px", "170px",
    "280px", "110px", "72px", "64px", "76px", "100px", "64px", "90px", "180px",
]  # fmt: skip
VERDICT_SCAN = 20  # with a verdict filter, at most this many times the table's rows are checked


def run_verdict(run: dict):
    """The checker's verdict on a completed run of a checked model (its final tokens' texts:
    these models' tokens are words, so the stored text split on spaces), else None."""
    if run["model"] not in CHECKED_MODELS or run["status"] != "completed" or not run.get("final_text"):
        return None
    return verdict_of(run["prompt"], run["final_text"].split())


def _number(value) -> str:
    """A number for a table cell: at most 2 decimals, no trailing zeros."""
    return "" if value is None else f"{round(float(value), 2):g}"


def run_columns(run: dict, notes: dict | None, verdict, preset: str | None) -> dict:
    """The table's columns of one run that come from its config, checker, preset and notes."""
    config = run.get("config") or {}
    steps = config.get("steps")
    energies = config.get("energies") or []
    return {
        "tokens/step": _number(run["gen_length"] / steps) if steps else "",
        "temperature": _number(config.get("temperature")),
        "seed": run["seed"],
        "energies": ", ".join(str(term) for term, _ in energies) or "none",
        "preset": preset or "",
        "verdict": "" if verdict is None else verdict.short(),
        "violations": "" if verdict is None else len(verdict.result.violations),
        "tags": ", ".join((notes or {}).get("tags", [])),
    }


def _rows(services: Services, model, strategy, status, since, text, verdict=ANY, tag="") -> list[list]:
    rows = services.limits.runs_table_rows
    wanted = None if verdict in (None, "", ANY) else verdict
    if wanted not in (None, "valid", "invalid"):
        raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}, got {verdict!r}")
    runs = services.store.list_runs(
        model=None if model in (None, ANY) else model,
        strategy=None if strategy in (None, ANY) else strategy,
        status=None if status in (None, ANY) else status,
        since=(since or "").strip() or None,
        text=(text or "").strip() or None,
        tag=(tag or "").strip() or None,
        limit=rows if wanted is None else rows * VERDICT_SCAN,
    )
    verdicts = {r["id"]: run_verdict(r) for r in runs}
    if wanted is not None:
        runs = [r for r in runs if verdicts[r["id"]] is not None and verdicts[r["id"]].valid == (wanted == "valid")]
        runs = runs[:rows]
    notes = services.store.notes_for([r["id"] for r in runs])
    preset_of = PresetMatcher(services)
    out = []
    # Branches right after their parent, marked ↳ (one more level per branch of a branch).
    for r, depth in run_tree(runs):
        note = notes.get(r["id"])
        # the preset the run recorded, else the one whose settings it has (runs before the record)
        preset = (note or {}).get("preset") or preset_of(r)
        extra = run_columns(r, note, verdicts[r["id"]], preset)
        cells = {
            "id": r["id"],
            "parent": "" if r["parent_run_id"] is None else r["parent_run_id"],
            "branch step": "" if r["branch_step"] is None else r["branch_step"],
            "created (UTC)": f"{r['created_at']:%Y-%m-%d %H:%M:%S}",
            "status": r["status"],
            "model": r["model"],
            "strategy": r["strategy"],
            "length": r["gen_length"],
            "steps": r["n_steps"],
            **extra,
            "prompt": ("· " * (depth - 1) + "↳ " if depth else "") + _clip(r["prompt"], 60),
            "text": _clip(r["final_text"] or "", 80),
        }
        out.append([cells[name] for name in COLUMNS])
    return out


def _clip(text: str, limit: int) -> str:
    """At most `limit` characters; a cut text ends in '…' so a cut word is not read as a token."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ExportDir:
    """One temporary folder per app for the files the Runs tab offers for download, removed at
    exit; of each kind only the newest few files are kept (Gradio serves its own copy of a
    file once the handler returns, so an older one is no longer needed)."""

    KEEP = 4  # per kind: a few sessions exporting at once do not remove each other's files

    def __init__(self) -> None:
        self._path: Path | None = None
        self._files: dict[str, list[Path]] = {}
        self._lock = threading.Lock()

    def write(self, kind: str, name: str, data: bytes) -> Path:
        with self._lock:
            if self._path is None:
                self._path = Path(tempfile.mkdtemp(prefix="explorer-exports-"))
                atexit.register(shutil.rmtree, self._path, ignore_errors=True)
            files = self._files.setdefault(kind, [])
            # a folder per file keeps the download's name (run-5.json) without clashes
            folder = Path(tempfile.mkdtemp(dir=self._path))
            path = folder / name
            path.write_bytes(data)
            files.append(path)
            while len(files) > self.KEEP:
                shutil.rmtree(files.pop(0).parent, ignore_errors=True)
            return path


class RunOpener:
    """Opens a stored run in the Decode tab: its view on the last step and, with the Decode form's
    `controls` (ui/controls.py), the form filled with its settings, Re-run shown and the fields
    marked changed since. Shared by every tab that opens a run (Runs, Sweeps)."""

    def __init__(
        self, services: Services, cache: ArraysCache, tabs: gr.Tabs, view: DecodeView, controls: dict | None = None
    ) -> None:
        self.services, self.cache, self.tabs, self.view, self.controls = services, cache, tabs, view, controls
        self.form_fields = [controls[name] for name in RUN_FIELDS] if controls is not None else []

    def outputs(self) -> list:
        """The components opening a run sets, in the order an API client sees them."""
        c = self.controls
        form = [*self.form_fields, c["opened_run"], c["rerun_btn"], c["changed_since"]] if c is not None else []
        return [*self.view.outputs("slider", "run_state"), self.tabs, *form]

    def open(self, rid, metric) -> dict:
        """{component: value}: the run `rid` in the Decode tab with heatmap `metric`, the tab selected."""
        services, cache, controls = self.services, self.cache, self.controls
        _get(services, cache, rid)
        shown = {**self.view.stored(services, cache, int(rid), metric), self.tabs: gr.Tabs(selected="decode")}
        if controls is None:
            return shown
        state = opened_state(services.store.get_run(int(rid)))
        values = [state["form"][name] for name in RUN_FIELDS]
        return {
            **shown,
            **dict(zip(self.form_fields, values)),
            controls["opened_run"]: state,
            controls["rerun_btn"]: gr.Button(visible=True),
            controls["changed_since"]: changed_since(state, *values),
        }


def runs_tab(
    services: Services, cache: ArraysCache, tabs: gr.Tabs, view: DecodeView, controls: dict | None = None
) -> RunOpener:
    """The Runs tab; what opens a run in the Decode tab (for the other tabs). `controls`: the Decode
    form's components (ui/controls.py); with them, Open also fills the form with the run's
    settings, shows Re-run and marks fields changed since."""
    opener = RunOpener(services, cache, tabs, view, controls)
    exports = ExportDir()
    gr.Markdown(
        "Every run is stored. Filter, click a row to select it, then open it in the Decode tab (its settings "
        "fill the form), tag it and write a note, export it (a JSON bundle with its whole branch tree when it "
        "has a parent or branches; its steps and events as CSV or Parquet tables), or delete it. "
        "Import a bundle recorded elsewhere."
    )
    with gr.Row():
        model = gr.Dropdown([ANY, *services.models], value=ANY, label="Model", allow_custom_value=True)
        strategy = gr.Dropdown([ANY, *STRATEGIES], value=ANY, label="Strategy")
        status = gr.Dropdown([ANY, *STATUSES], value=ANY, label="Status")
        since = gr.Textbox(label="Since (YYYY-MM-DD)", placeholder="2026-11-01")
        text = gr.Textbox(label="Text search", placeholder="words in prompt or text")
        verdict = gr.Dropdown(list(VERDICTS), value=ANY, label="Checker verdict", elem_id="runs-verdict")
        tag = gr.Textbox("", label="Tag", placeholder="a tag (a, b: both)", elem_id="runs-tag")
        refresh = gr.Button("Refresh", elem_id="runs-refresh")
    table = gr.Dataframe(
        headers=COLUMNS,
        value=lambda: _rows(services, ANY, ANY, ANY, "", ""),
        interactive=False,
        wrap=True,
        elem_id="runs-table",
        column_widths=COLUMN_WIDTHS,
    )
    with gr.Row():
        run_id = gr.Number(label="Selected run id", precision=None, elem_id="selected-run")  # 2.5: refused, not rounded
        open_btn = gr.Button("Open in Decode", variant="primary")
        export_btn = gr.Button("Export bundle")
        csv_btn = gr.Button("Export CSV", elem_id="export-csv")
        parquet_btn = gr.Button("Export Parquet", elem_id="export-parquet")
        delete_btn = gr.Button("Delete", variant="stop", elem_id="delete-run")
        confirm_btn = gr.Button("Confirm delete", variant="stop", visible=False, elem_id="confirm-delete")
        # the run the Confirm button deletes: /delete_run deletes only when it matches the selection
        confirm_id = gr.Number(None, precision=0, visible=False, label="Confirm delete of run")
    with gr.Row(equal_height=True):
        tags = gr.Textbox(label="Tags of the selected run", placeholder="comma-separated", elem_id="run-tags", scale=2)
        note = gr.Textbox(label="Note", lines=2, elem_id="run-note", scale=4)
        save_notes = gr.Button("Save tags and note", elem_id="save-notes", scale=1)
    message = gr.HTML()
    with gr.Row():
        exported = gr.File(label="Exported file", interactive=False)
        upload = gr.File(label="Import a bundle (.json)", file_types=[".json"], type="filepath")
    filters = [model, strategy, status, since, text, verdict, tag]

    def refresh_rows(*values):
        try:
            return _rows(services, *values), gr.skip()
        except ValueError as exc:
            return gr.skip(), status_html("error", str(exc))

    def select(evt: gr.SelectData, rows):
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        return rows.iloc[row, 0] if hasattr(rows, "iloc") else rows[row][0]

    def export(rid):
        _get(services, cache, rid)
        # a branch's links survive only inside a tree bundle; a run without relatives stays version 1
        tree = export_tree(services.store, int(rid))
        n = len(tree["runs"])
        name = f"run-{int(rid)}-tree.json" if n > 1 else f"run-{int(rid)}.json"
        path = exports.write("bundle", name, bundle_json(tree) if n > 1 else export_run_json(services.store, int(rid)))
        what = f" with its branch tree ({n} runs)" if n > 1 else ""
        return str(path), status_html("ok", f"Run {int(rid)} exported{what} ({path.stat().st_size / 1024:.0f} KiB).")

    def export_tables(fmt: str):
        def handler(rid):
            _get(services, cache, rid)
            path = exports.write(fmt, f"run-{int(rid)}-{fmt}.zip", export_zip(services.store, int(rid), fmt))
            size = path.stat().st_size / 1024
            return str(path), status_html(
                "ok", f"Run {int(rid)}: steps, positions and events as {fmt.upper()} tables in a zip ({size:.0f} KiB)."
            )

        return handler

    def ask_delete(rid):
        _get(services, cache, rid)
        rid = int(rid)
        return (
            gr.Button(f"Confirm delete run {rid}", visible=True),
            rid,
            status_html("warn", f"Delete run {rid} and its steps? Press 'Confirm delete run {rid}' to delete it."),
        )

    def delete(rid, confirm, *values):
        _get(services, cache, rid)
        if confirm is None or int(confirm) != int(rid):
            raise refuse(f"run {int(rid)} is not deleted: press Delete, then 'Confirm delete run {int(rid)}'")
        if (services.store.get_run(int(rid)) or {}).get("status") == "running":
            raise refuse(f"run {int(rid)} is still decoding: stop it (or let it end) before deleting it")
        services.store.delete_run(int(rid))
        cache.forget(int(rid))
        return (
            _rows(services, *values),
            status_html("ok", f"Run {int(rid)} deleted."),
            gr.Button(visible=False),
            None,
        )

    def selected(rid):
        """A new selection: its tags and note; a pending delete of another run is called off."""
        notes = services.store.get_notes(int(rid)) if rid is not None else {"tags": [], "note": ""}
        return ", ".join(notes["tags"]), notes["note"], gr.Button(visible=False), None

    def save(rid, tag_text, note_text, *values):
        _get(services, cache, rid)
        try:
            stored = services.store.set_notes(int(rid), tag_text, note_text)
        except ValueError as exc:
            raise refuse(str(exc)) from None
        shown = ", ".join(stored["tags"]) or "no tags"
        done = f"Run {int(rid)}: {shown}; " + ("note saved." if stored["note"] else "no note.")
        return _rows(services, *values), status_html("ok", done), ", ".join(stored["tags"])

    def do_import(path, *values):
        if not path:
            raise refuse("choose a .json bundle to import")
        upload = Path(path)
        try:  # the upload is read once and removed, accepted or not: nothing is left behind
            size = upload.stat().st_size
            if size > services.limits.max_import_bytes:
                raise refuse(
                    f"the file is {_size(size)}; this server accepts bundles up to "
                    f"{_size(services.limits.max_import_bytes)}"
                )
            data = upload.read_bytes()
        finally:
            upload.unlink(missing_ok=True)
        limits = services.limits
        try:
            report = import_bundle(
                services.store,
                data,
                max_gen_length=limits.max_gen_length,
                max_steps=limits.max_steps,
                vocab_size=lambda model: _vocab_size(services, model),
            )
        except BundleError as exc:
            raise refuse(f"cannot import this file: {exc}") from None
        ids = report.run_ids
        done = f"Imported as run {ids[0]}." if len(ids) == 1 else f"Imported {len(ids)} runs as {_id_list(ids)}."
        message = " ".join([done, *(f"Note: {note}." for note in report.notes)])
        return _rows(services, *values), status_html("ok", message), ids[0]

    refresh.click(refresh_rows, filters, [table, message], api_name="list_runs")
    for box in (since, text, tag):
        box.submit(refresh_rows, filters, [table, message], api_name=False)
    for box in (model, strategy, status, verdict):
        box.change(refresh_rows, filters, [table, message], api_name=False)
    table.select(select, [table], [run_id], api_name=False)
    run_id.change(
        selected, [run_id], [tags, note, confirm_btn, confirm_id], api_name="run_notes", show_progress="hidden"
    )
    open_btn.click(opener.open, [run_id, view.components["metric"]], opener.outputs(), api_name="open_run")
    export_btn.click(export, [run_id], [exported, message], api_name="export_run")
    csv_btn.click(export_tables("csv"), [run_id], [exported, message], api_name="export_csv")
    parquet_btn.click(export_tables("parquet"), [run_id], [exported, message], api_name="export_parquet")
    delete_btn.click(ask_delete, [run_id], [confirm_btn, confirm_id, message], api_name="ask_delete")
    confirm_btn.click(
        delete, [run_id, confirm_id, *filters], [table, message, confirm_btn, confirm_id], api_name="delete_run"
    )
    save_notes.click(save, [run_id, tags, note, *filters], [table, message, tags], api_name="save_notes")
    upload.upload(do_import, [upload, *filters], [table, message, run_id], api_name="import_run")
    if controls is not None:
        wire_changed_since(controls)
    return opener


def _id_list(ids: list[int]) -> str:
    """New ids are consecutive in one import unless another writer interleaved: a range, else a list."""
    if ids == list(range(ids[0], ids[0] + len(ids))):
        return f"runs {ids[0]}–{ids[-1]}"
    return "runs " + ", ".join(map(str, ids))


def _size(n: int) -> str:
    """A byte count for people: 1000 bytes, 12.3 KiB, 32.0 MiB (a limit under 1 MiB must not read '0 MiB')."""
    return f"{n} bytes" if n < 1024 else f"{n / 1024:.1f} KiB" if n < 2**20 else f"{n / 2**20:.1f} MiB"


def _vocab_size(services: Services, model: str) -> int | None:
    """The vocabulary size of a model offered here (a bundle's token ids are checked against it), else None."""
    spec = services.models.get(model)
    size = getattr(spec, "vocab_size", None)
    if size is None and spec is not None:  # the embedded models: their tokenizer's length
        tokenizer = getattr(spec.token_text, "__self__", None)
        size = len(tokenizer) if hasattr(tokenizer, "__len__") else None
    return size


MAX_RUN_ID = 2**63 - 1  # ids are 64-bit signed integers in the store


def _get(services: Services, cache: ArraysCache, rid):
    if rid is None:
        raise refuse("select a run first (click a row or type its id)")
    if not isinstance(rid, int | float) or rid != rid or not 1 <= rid <= MAX_RUN_ID or rid != int(rid):
        raise refuse(f"a run id is a whole number from 1 to {MAX_RUN_ID}, not {str(rid)[:40]}")
    try:
        return cache.get(int(rid))
    except KeyError:
        raise refuse(f"there is no run with id {int(rid)}") from None
