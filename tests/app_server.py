"""Start the real Gradio app on a free loopback port for tests that talk to it over HTTP.

    with running_app(tmp_dir) as (services, url):
        client = gradio_client.Client(url, verbose=False)

One model worker (spawned, embedded model preloaded), a SQLite file under `tmp_dir`, the
queue configured as `app.py` configures it, and the css/js `app.py` passes at launch.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no network here: never phone home

import app
from explorer.services import Services
from explorer.ui.app import build_app
from explorer.ui.logic import FORM_DEFAULTS

# The /decode endpoint's inputs, in order (the Decode form's fields), with the values most tests
# use: the form's own initial values on the embedded model (dependency violations on).
DECODE_DEFAULTS = {**FORM_DEFAULTS, "model": "embedded", "violations": True}


def decode_args(**overrides) -> list:
    unknown = set(overrides) - set(DECODE_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown /decode inputs: {sorted(unknown)}")
    return list({**DECODE_DEFAULTS, **overrides}.values())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_app(tmp_dir: Path, services: Services | None = None, **create_kwargs):
    """Yield (services, url) for a running app; always closes the server and the worker.
    `services`: serve these (e.g. from app.create_services) instead of new ones on tmp_dir/ui.db."""
    if services is None:
        services = Services.create(f"sqlite:///{Path(tmp_dir) / 'ui.db'}", threads=1, **create_kwargs)
    demo = None
    try:
        demo = build_app(services)
        demo.queue(default_concurrency_limit=None)
        _, url, _ = demo.launch(
            server_name="127.0.0.1",
            server_port=free_port(),
            prevent_thread_lock=True,
            quiet=True,
            **app.launch_kwargs(),
        )
        yield services, url
    finally:
        if demo is not None:
            demo.close()
        services.close()
