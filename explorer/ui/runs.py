"""The Runs tab: stored runs with filters; open, delete, export and import."""

from __future__ import annotations

import tempfile
from pathlib import Path

import gradio as gr

from explorer.decoding.strategies import STRATEGIES
from explorer.services import Services
from explorer.store.bundle import BundleError, export_run_json, import_run
from explorer.store.database import STATUSES
from explorer.ui.logic import ArraysCache
from explorer.ui.view import DecodeView, status_html

ANY = "any"
COLUMNS = ["id", "created (UTC)", "status", "model", "strategy", "length", "steps", "prompt", "text"]


def _rows(services: Services, model, strategy, status, since, text) -> list[list]:
    runs = services.store.list_runs(
        model=None if model in (None, ANY) else model,
        strategy=None if strategy in (None, ANY) else strategy,
        status=None if status in (None, ANY) else status,
        since=(since or "").strip() or None,
        text=(text or "").strip() or None,
        limit=services.limits.runs_table_rows,
    )
    return [
        [
            r["id"],
            f"{r['created_at']:%Y-%m-%d %H:%M:%S}",
            r["status"],
            r["model"],
            r["strategy"],
            r["gen_length"],
            r["n_steps"],
            _clip(r["prompt"], 60),
            _clip(r["final_text"] or "", 80),
        ]
        for r in runs
    ]


def _clip(text: str, limit: int) -> str:
    """At most `limit` characters; a cut text ends in '…' so a cut word is not read as a token."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def runs_tab(services: Services, cache: ArraysCache, tabs: gr.Tabs, view: DecodeView) -> None:
    gr.Markdown(
        "Every run is stored. Filter, click a row to select it, then open it in the Decode tab, "
        "export it as a JSON bundle, or delete it. Import a bundle recorded elsewhere."
    )
    with gr.Row():
        model = gr.Dropdown([ANY, *services.models], value=ANY, label="Model", allow_custom_value=True)
        strategy = gr.Dropdown([ANY, *STRATEGIES], value=ANY, label="Strategy")
        status = gr.Dropdown([ANY, *STATUSES], value=ANY, label="Status")
        since = gr.Textbox(label="Since (YYYY-MM-DD)", placeholder="2026-11-01")
        text = gr.Textbox(label="Text search", placeholder="words in prompt or text")
        refresh = gr.Button("Refresh", elem_id="runs-refresh")
    table = gr.Dataframe(
        headers=COLUMNS,
        value=lambda: _rows(services, ANY, ANY, ANY, "", ""),
        interactive=False,
        wrap=True,
        elem_id="runs-table",
        # fits the page width: the text column wraps instead of running off the right edge
        column_widths=["4%", "13%", "8%", "8%", "12%", "6%", "5%", "18%", "26%"],
    )
    with gr.Row():
        run_id = gr.Number(label="Selected run id", precision=0, elem_id="selected-run")
        open_btn = gr.Button("Open in Decode", variant="primary")
        export_btn = gr.Button("Export bundle")
        delete_btn = gr.Button("Delete", variant="stop")
    message = gr.HTML()
    with gr.Row():
        exported = gr.File(label="Exported bundle", interactive=False)
        upload = gr.File(label="Import a bundle (.json)", file_types=[".json"], type="filepath")
    filters = [model, strategy, status, since, text]

    def refresh_rows(*values):
        try:
            return _rows(services, *values), gr.skip()
        except ValueError as exc:
            return gr.skip(), status_html("error", str(exc))

    def select(evt: gr.SelectData, rows):
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        return rows.iloc[row, 0] if hasattr(rows, "iloc") else rows[row][0]

    def open_run(rid, metric):
        _get(services, cache, rid)
        return {**view.stored(services, cache, int(rid), metric), tabs: gr.Tabs(selected="decode")}

    def export(rid):
        _get(services, cache, rid)
        path = Path(tempfile.mkdtemp(prefix="explorer-export-")) / f"run-{int(rid)}.json"
        path.write_bytes(export_run_json(services.store, int(rid)))
        return str(path), status_html("ok", f"Run {int(rid)} exported ({path.stat().st_size / 1024:.0f} KiB).")

    def delete(rid, *values):
        _get(services, cache, rid)
        services.store.delete_run(int(rid))
        cache.forget(int(rid))
        return _rows(services, *values), status_html("ok", f"Run {int(rid)} deleted.")

    def do_import(path, *values):
        if not path:
            raise gr.Error("choose a .json bundle to import")
        size = Path(path).stat().st_size
        if size > services.limits.max_import_bytes:
            raise gr.Error(
                f"the file is {_size(size)}; this server accepts bundles up to "
                f"{_size(services.limits.max_import_bytes)}"
            )
        try:
            new_id = import_run(services.store, Path(path).read_bytes())
        except BundleError as exc:
            raise gr.Error(f"cannot import this file: {exc}") from None
        return _rows(services, *values), status_html("ok", f"Imported as run {new_id}."), new_id

    refresh.click(refresh_rows, filters, [table, message], api_name="list_runs")
    for box in (since, text):
        box.submit(refresh_rows, filters, [table, message], api_name=False)
    for box in (model, strategy, status):
        box.change(refresh_rows, filters, [table, message], api_name=False)
    table.select(select, [table], [run_id], api_name=False)
    open_btn.click(
        open_run, [run_id, view.components["metric"]], [*view.outputs("slider", "run_state"), tabs], api_name="open_run"
    )
    export_btn.click(export, [run_id], [exported, message], api_name="export_run")
    delete_btn.click(delete, [run_id, *filters], [table, message], api_name="delete_run")
    upload.upload(do_import, [upload, *filters], [table, message, run_id], api_name="import_run")


def _size(n: int) -> str:
    """A byte count for people: 1000 bytes, 12.3 KiB, 32.0 MiB (a limit under 1 MiB must not read '0 MiB')."""
    return f"{n} bytes" if n < 1024 else f"{n / 1024:.1f} KiB" if n < 2**20 else f"{n / 2**20:.1f} MiB"


def _get(services: Services, cache: ArraysCache, rid):
    if rid is None:
        raise gr.Error("select a run first (click a row or type its id)")
    try:
        return cache.get(int(rid))
    except KeyError:
        raise gr.Error(f"there is no run with id {int(rid)}") from None
