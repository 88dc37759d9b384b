"""Permalinks: the page's address opens a stored state (`?run=ID&step=K`: the Decode tab on that
run after that step; `?tab=compare&a=ID&b=ID[&c=..&d=..]`: those runs in Compare). The page's
player writes the first kind as it moves (static/components/player.js)."""

from __future__ import annotations

import gradio as gr

from explorer.services import Services
from explorer.ui.compare import CompareTab
from explorer.ui.logic import ArraysCache
from explorer.ui.toasts import warn
from explorer.ui.view import DecodeView


def permalink_request(query: dict) -> tuple[str, list[int], int | None] | None:
    """(tab, run ids, step) asked for by a page address's query, None when it asks for nothing.
    `?run=ID&step=K`: the Decode tab on run ID after step K; `?tab=compare&a=ID&b=ID[&c=..&d=..]`:
    Compare with those runs. Not a number: refused (ValueError, with the parameter's name)."""

    def number(name: str) -> int:
        try:
            return int(str(query[name]).strip())
        except ValueError:
            raise ValueError(f"the address's {name}= is not a whole number: {str(query[name])[:40]!r}") from None

    if str(query.get("tab", "")).strip() == "compare":
        ids = [number(name) for name in ("a", "b", "c", "d") if name in query]
        return ("compare", ids, None) if ids else None
    if "run" in query:
        return "decode", [number("run")], number("step") if "step" in query else None
    return None


def open_permalink(
    services: Services,
    cache: ArraysCache,
    view: DecodeView,
    compare: CompareTab,
    tabs: gr.Tabs,
    metric: str,
    request: gr.Request,
) -> dict:
    """The page opened with a permalink: that run at that step, or those runs in Compare. A bad
    or stale address leaves the page as it is and says why in a toast."""
    try:
        asked = permalink_request(dict(request.query_params) if request is not None else {})
        if asked is None:
            return {tabs: gr.skip()}
        tab, ids, step = asked
        if tab == "compare":
            return {**compare.open_runs(ids, metric or "confidence"), tabs: gr.Tabs(selected="compare")}
        cache.get(ids[0])  # KeyError: no such run
        return {
            **view.stored(services, cache, ids[0], metric or "confidence", step=step),
            tabs: gr.Tabs(selected="decode"),
        }
    except KeyError:
        warn(f"This link names a run that is not in this server's store ({request.query_params!s}).")
    except (ValueError, gr.Error) as exc:
        warn(f"This link cannot be opened: {exc}")
    return {tabs: gr.skip()}
