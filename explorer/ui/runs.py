"""The Runs tab: stored runs with filters; open, delete, export and import."""

from __future__ import annotations

import tempfile
from pathlib import Path

import gradio as gr

from explorer.decoding.strategies import STRATEGIES
from explorer.services import Services
from explorer.store.bundle import BundleError, bundle_json, export_run_json, export_tree, import_bundle
from explorer.store.database import STATUSES
from explorer.ui.logic import ArraysCache, run_tree
from explorer.ui.view import DecodeView, status_html

ANY = "any"
COLUMNS = [
    "id",
    "parent",
    "branch step",
    "created (UTC)",
    "status",
    "model",
    "strategy",
    "length",
    "steps",
    "prompt",
    "text",
]


def _rows(services: Services, model, strategy, status, since, text) -> list[list]:
    runs = services.store.list_runs(
        model=None if model in (None, ANY) else model,
        strategy=None if strategy in (None, ANY) else strategy,
        status=None if status in (None, ANY) else status,
        since=(since or "").strip() or None,
        text=(text or "").strip() or None,
        limit=services.limits.runs_table_rows,
    )
    # Branches right after their parent, marked ↳ (one more level per branch of a branch).
    return [
        [
            r["id"],
            "" if r["parent_run_id"] is None else r["parent_run_id"],
            "" if r["branch_step"] is None else r["branch_step"],
            f"{r['created_at']:%Y-%m-%d %H:%M:%S}",
            r["status"],
            r["model"],
            r["strategy"],
            r["gen_length"],
            r["n_steps"],
            ("· " * (depth - 1) + "↳ " if depth else "") + _clip(r["prompt"], 60),
            _clip(r["final_text"] or "", 80),
        ]
        for r, depth in run_tree(runs)
    ]


def _clip(text: str, limit: int) -> str:
    """At most `limit` characters; a cut text ends in '…' so a cut word is not read as a token."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def runs_tab(services: Services, cache: ArraysCache, tabs: gr.Tabs, view: DecodeView) -> None:
    gr.Markdown(
        "Every run is stored. Filter, click a row to select it, then open it in the Decode tab, "
        "export it as a JSON bundle (with its whole branch tree when it has a parent or branches), "
        "or delete it. Import a bundle recorded elsewhere."
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
        column_widths=["4%", "6%", "7%", "11%", "8%", "8%", "11%", "6%", "5%", "14%", "20%"],
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
        # a branch's links survive only inside a tree bundle; a run without relatives stays version 1
        tree = export_tree(services.store, int(rid))
        n = len(tree["runs"])
        name = f"run-{int(rid)}-tree.json" if n > 1 else f"run-{int(rid)}.json"
        path = Path(tempfile.mkdtemp(prefix="explorer-export-")) / name
        path.write_bytes(bundle_json(tree) if n > 1 else export_run_json(services.store, int(rid)))
        what = f" with its branch tree ({n} runs)" if n > 1 else ""
        return str(path), status_html("ok", f"Run {int(rid)} exported{what} ({path.stat().st_size / 1024:.0f} KiB).")

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
            report = import_bundle(services.store, Path(path).read_bytes())
        except BundleError as exc:
            raise gr.Error(f"cannot import this file: {exc}") from None
        ids = report.run_ids
        done = f"Imported as run {ids[0]}." if len(ids) == 1 else f"Imported {len(ids)} runs as {_id_list(ids)}."
        message = " ".join([done, *(f"Note: {note}." for note in report.notes)])
        return _rows(services, *values), status_html("ok", message), ids[0]

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


def _id_list(ids: list[int]) -> str:
    """New ids are consecutive in one import unless another writer interleaved: a range, else a list."""
    if ids == list(range(ids[0], ids[0] + len(ids))):
        return f"runs {ids[0]}–{ids[-1]}"
    return "runs " + ", ".join(map(str, ids))


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
