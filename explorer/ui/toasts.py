"""The UI's error and notice toasts. Gradio renders a toast's text as markup, and a message may
hold what a user typed or a bundle held (a prompt, a model name, a token): every toast goes
through here. Only what could open a tag (`<` before a letter, `/`, `!` or `?`) is escaped, so an
API client still reads "start <= end" as written while no markup can reach the page."""

from __future__ import annotations

import re

import gradio as gr

TAG_OPEN = re.compile(r"<(?=[A-Za-z/!?])")


def as_text(message: object) -> str:
    return TAG_OPEN.sub("&lt;", str(message))


def refuse(message: object, **kwargs) -> gr.Error:
    """A gr.Error to raise, its text shown as text."""
    return gr.Error(as_text(message), **kwargs)


def warn(message: object) -> None:
    gr.Warning(as_text(message))


def inform(message: object) -> None:
    gr.Info(as_text(message))
