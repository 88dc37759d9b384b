"""`gpu`: Hugging Face ZeroGPU's `spaces.GPU` where it can work, a no-op decorator elsewhere.

ZeroGPU attaches a GPU only while a function decorated with `@spaces.GPU` runs, and only for
functions defined and called in the Gradio server's own (main) process. The explorer runs its
models in a separate worker process (explorer/worker.py), so there the decorator can do
nothing: `gpu` is the identity in any child process, and everywhere unless the Space runs on
ZeroGPU (`SPACES_ZERO_GPU` set) with the `spaces` package installed. On ZeroGPU today the
worker therefore sees no CUDA device and decodes on the CPU (fine for the embedded model);
an in-process job runner that calls the decorated `run_job` from the Gradio process would be
needed for GPU models there (see the README).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable


def _identity(fn: Callable | None = None, **_kwargs):
    """`@gpu` and `@gpu(duration=120)` both return the function unchanged."""
    if fn is None:
        return lambda f: f
    return fn


def on_zerogpu() -> bool:
    return os.environ.get("SPACES_ZERO_GPU", "").strip().lower() not in ("", "0", "false", "no")


def _resolve() -> Callable:
    if not on_zerogpu() or multiprocessing.parent_process() is not None:
        return _identity
    try:
        import spaces  # only on a ZeroGPU Space: importing it elsewhere is not needed
    except ImportError:
        return _identity
    return spaces.GPU


gpu = _resolve()
