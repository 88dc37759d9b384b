"""The UI's error and notice toasts. Gradio renders a toast's text as markup, and a message may
hold what a user typed or a bundle held (a prompt, a model name, a token): every toast goes
through here, escaped once."""

from __future__ import annotations

import html

import gradio as gr


def refuse(message: str, **kwargs) -> gr.Error:
    """A gr.Error to raise, its text shown as text."""
    return gr.Error(html.escape(str(message), quote=False), **kwargs)


def warn(message: str) -> None:
    gr.Warning(html.escape(str(message), quote=False))


def inform(message: str) -> None:
    gr.Info(html.escape(str(message), quote=False))
