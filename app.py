"""Start the Diffusion-LM Trajectory Explorer: `python app.py [--host H] [--port P] [--db URL]`.

Starts the model worker process (embedded model preloaded) and the Gradio UI. Honours
GRADIO_SERVER_NAME / GRADIO_SERVER_PORT; flags win over them. `--replay-only` (or
EXPLORER_REPLAY_ONLY=1) serves the stored runs with no worker and no model loaded.
`--workers N` runs N local worker processes; `--workers ray[:N]` runs the workers as Ray actors
(explorer/ray_pool.py; needs `pip install -r requirements-scale.txt`) on the cluster at
`--ray-address` (default: $RAY_ADDRESS, else a local Ray instance), one per GPU by default.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

STATIC = Path(__file__).resolve().parent / "static"
REPLAY_ONLY_ENV = "EXPLORER_REPLAY_ONLY"


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


@dataclass(frozen=True)
class Workers:
    """`--workers`: `count` local processes, or Ray actors (`count` None: one per GPU, or one)."""

    on_ray: bool
    count: int | None


def workers_arg(text: str) -> Workers:
    """`N`, `ray` or `ray:N` (N >= 1); anything else is argparse's one-line error."""
    kind, colon, count = text.strip().lower().partition(":")
    if kind == "ray" and not colon:
        return Workers(True, None)
    number = count if kind == "ray" else kind
    if (kind == "ray" or not colon) and number.isdigit() and int(number) >= 1:
        return Workers(kind == "ray", int(number))
    raise argparse.ArgumentTypeError(f"{text!r}: expected a number of worker processes (e.g. 2), 'ray' or 'ray:N'")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument(
        "--db", default=None, help="SQLAlchemy URL (default: $EXPLORER_DB_URL or a file in the data dir)"
    )
    parser.add_argument("--data-dir", default=None, help="where the default SQLite file lives")
    parser.add_argument(
        "--workers",
        type=workers_arg,
        default=Workers(False, 1),
        metavar="N|ray[:N]",
        help="model workers, each running one job at a time: N local processes (default 1), or Ray actors "
        "('ray': one per GPU of the cluster, or one; 'ray:N': N of them)",
    )
    parser.add_argument(
        "--ray-address",
        default=os.environ.get("RAY_ADDRESS"),
        help="with --workers ray: the Ray cluster to join (default: $RAY_ADDRESS, else a local Ray instance)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads per worker")
    parser.add_argument("--max-gen-length", type=int, default=256)
    parser.add_argument("--max-steps", type=int, default=256)
    parser.add_argument("--max-pending", type=int, default=32, help="jobs allowed to wait in line")
    parser.add_argument(
        "--models-config",
        default=None,
        help="operator configuration of the models offered (JSON/TOML; also $EXPLORER_MODELS_CONFIG); "
        "without it only the embedded model is offered",
    )
    parser.add_argument(
        "--replay-only",
        action="store_true",
        default=env_flag(REPLAY_ONLY_ENV),
        help=f"serve stored runs only: no model, no worker process (also ${REPLAY_ONLY_ENV}=1)",
    )
    return parser.parse_args(argv)


def launch_kwargs() -> dict:
    """Gradio 6 takes one css and one js at launch: every static/*.css joined, and every
    static/*.js (each an arrow function `() => {...}`) called in turn, in file-name order."""
    css = "\n".join(path.read_text() for path in sorted(STATIC.glob("*.css")))
    scripts = ",\n".join(f"({path.read_text().strip().rstrip(';')})" for path in sorted(STATIC.glob("*.js")))
    # Third-party code the page needs before the scripts run (static/vendor/, each with its licence).
    head = "".join(f"<script>{path.read_text()}</script>" for path in sorted((STATIC / "vendor").glob("*.js")))
    # Gradio refuses a larger upload while it arrives (not after writing it whole): a bundle import's cap.
    from explorer.services import Limits

    return {
        "css": css,
        "js": f"() => {{ [{scripts}].forEach((setup) => setup()); }}",
        "head": head,
        "max_file_size": Limits().max_import_bytes,
    }


def create_services(args: argparse.Namespace):
    from explorer.adapters.registry import resolve_registry
    from explorer.services import Limits, Services
    from explorer.store.database import resolve_url

    limits = Limits(max_gen_length=args.max_gen_length, max_steps=args.max_steps, max_pending_jobs=args.max_pending)
    # Validated now; the services hand this registry to the worker processes they start.
    registry = resolve_registry(args.models_config)
    return Services.create(
        resolve_url(args.db, args.data_dir),
        registry,
        n_workers=args.workers.count,
        threads=args.threads,
        limits=limits,
        replay_only=args.replay_only,
        on_ray=args.workers.on_ray,
        ray_address=args.ray_address,
    )


def require_ray(args: argparse.Namespace) -> None:
    """`--workers ray` without Ray installed: one line saying what to install, not a traceback."""
    if args.workers.on_ray and not args.replay_only and importlib.util.find_spec("ray") is None:
        sys.exit("error: --workers ray needs Ray: pip install -r requirements-scale.txt")


def stop_on_sigterm() -> None:
    """`docker stop` and a Space restart send SIGTERM. Python as a container's PID 1 would ignore
    it (no default action for PID 1): treat it as Ctrl-C, so Gradio closes the server and the
    worker pool is shut down in `main`'s finally."""

    def interrupt(_signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    require_ray(args)
    from explorer.ui.app import build_app

    stop_on_sigterm()
    services = create_services(args)
    stop_on_sigterm()  # again: starting Ray (`--workers ray`) installs a SIGTERM handler of its own
    try:
        app = build_app(services)
        app.queue(default_concurrency_limit=None)
        app.launch(server_name=args.host, server_port=args.port, **launch_kwargs())
    finally:
        services.close()


if __name__ == "__main__":
    main()
