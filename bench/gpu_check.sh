#!/usr/bin/env bash
# The prepared GPU check (docs/benchmarks.md, "GPU benchmark"): one script, at most 5 minutes, that always finishes.
#
#   bash bench/gpu_check.sh                   # from the repo root, on the GPU machine; results under $OUT
#   bash bench/gpu_check.sh --prepare-wheels  # on a machine that reaches PyPI, before: see step 1
#
# Steps, each under `timeout` within a total budget of GPU_CHECK_BUDGET_S (default 300 s; a step that outlives its
# timeout is killed 10 s later at worst, so the whole stays under 5.5 minutes):
#   0. the GPU: nvidia-smi's name, memory and driver                                    (<= 15 s)
#   1. install what the benchmark and the GPU tests import and the machine lacks       (<= 60 s)
#      (sqlalchemy, alembic, pydantic, ... from requirements.txt; never torch: the machine's CUDA build of torch is
#      kept, as a CPU wheel there would hide the GPU). From ./.whl/*.whl when present (a device machine reaches no
#      package registry: `--prepare-wheels` downloads them here, and the device call carries `.whl`), else pip.
#   2. the GPU tests: tests/test_gpu_bench.py (its CUDA tests: every section of the benchmark on CUDA in bf16, a
#      real CUDA out-of-memory error in a run and the recovery from it), the worker's out-of-memory tests, the
#      adapters' bf16 / CUDA device resolution                                             (<= 90 s)
#   3. bench/bench_gpu.py at the LLaDA-8B shape, bf16, random weights (nothing downloaded), 320 tokens, 64 steps,
#      every section (engine, violations, uni, lookahead, compiled; compiling takes most of it); its JSON is
#      rewritten after each section, so a timeout keeps the finished ones  (the rest but step 4's, typically >= 120 s)
#   4. bench/bench_gemma_gpu.py: DiffusionGemma at the 26B-A4B text shape, bf16, random weights (nothing
#      downloaded): transformers' generate() against explorer's engine, same prompt / seed / settings,
#      ms per denoising step and their ratio, decoder passes and final sequences (must be equal), peak memory
#                                                                  (GPU_CHECK_GEMMA_S, default 90 s, kept for it)
# Files under $OUT (default ./gpu_check_out): gpu_check.log (all of it), nvidia_smi.txt, bench_gpu.log,
# bench_gpu.json, bench_gemma_gpu.log, bench_gemma_gpu.json, pytest.log, pytest.xml, summary.txt.
# Without CUDA (a dry run on any machine) steps 3 and 4 run the CPU smoke modes (--tiny, --shape tiny) instead.
# Overrides: PYTHON (default python3), GPU_CHECK_BUDGET_S, BENCH_ARGS, GEMMA_BENCH_ARGS, GPU_CHECK_GEMMA_S,
# GPU_CHECK_TESTS (pytest arguments).
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
WHEELS=.whl
# What bench/bench_gpu.py and the GPU tests import (torch and the rest come with the machine or from here).
NEEDS="torch numpy transformers safetensors tqdm sqlalchemy alembic pydantic pytest"
# The wheels a device machine's image lacks (it has torch, transformers, numpy, pytest; markupsafe too, brought anyway).
WHEEL_PACKAGES="sqlalchemy alembic mako markupsafe pydantic pydantic-core annotated-types typing-inspection typing-extensions"

if [[ "${1:-}" == "--prepare-wheels" ]]; then
    # Here, with PyPI: the versions this machine runs the tests with, as CPython 3.12 x86-64 wheels.
    set -e
    mkdir -p "$WHEELS"
    grep -qxF "/$WHEELS/" .git/info/exclude 2>/dev/null || echo "/$WHEELS/" >>.git/info/exclude
    pins=$($PY -c "import importlib.metadata as m, sys; print(' '.join(f'{p}=={m.version(p)}' for p in sys.argv[1:]))" \
        $WHEEL_PACKAGES)
    # shellcheck disable=SC2086
    $PY -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$WHEELS" $pins
    ls -l "$WHEELS"
    echo "done: carry '$WHEELS' with the device call that runs 'bash bench/gpu_check.sh'"
    exit 0
fi

OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/gpu_check_inductor}
BUDGET=${GPU_CHECK_BUDGET_S:-300}
GEMMA_S=${GPU_CHECK_GEMMA_S:-90}
START=$SECONDS

# seconds for a step: its own cap, or what is left of the budget (5 s kept for the summary, and $2 s more kept
# for the steps after it)
allow() {
    local left=$((BUDGET - (SECONDS - START) - 5 - ${2:-0}))
    ((left < 1)) && left=1
    echo $(($1 < left ? $1 : left))
}
step() { echo; echo "== [$((SECONDS - START)) s] $*"; }

main() {
status=()
step "0. the GPU"
if command -v nvidia-smi >/dev/null; then
    timeout "$(allow 15)" nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    timeout "$(allow 10)" nvidia-smi >"$OUT/nvidia_smi.txt" 2>&1 || true
else
    echo "nvidia-smi: not found" | tee "$OUT/nvidia_smi.txt"
fi
echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo '?') $(git status --porcelain 2>/dev/null | wc -l) changed file(s)"

step "1. install"
have() { $PY -c "import sys, importlib; [importlib.import_module(m) for m in sys.argv[1:]]" $NEEDS 2>/dev/null; }
if have; then
    echo "already there: $NEEDS"
elif compgen -G "$WHEELS/*.whl" >/dev/null; then
    echo "from $WHEELS/: $(ls "$WHEELS" | tr '\n' ' ')"
    timeout "$(allow 60)" $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/gpu_check_site "$WHEELS"/*.whl
    export PYTHONPATH=/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}
else
    # requirements.txt's own specifiers for what is needed, never its torch line (see the top of this file).
    grep -E '^(numpy|transformers|safetensors|tqdm|sqlalchemy|alembic|pydantic)([<>=!~ ]|$)' requirements.txt \
        >/tmp/gpu_check_requirements.txt
    grep -E '^pytest([<>=!~ ]|$)' requirements-dev.txt >>/tmp/gpu_check_requirements.txt
    echo "pip: $(tr '\n' ' ' </tmp/gpu_check_requirements.txt)"
    timeout "$(allow 60)" $PY -m pip install -q --retries 1 --timeout 15 -r /tmp/gpu_check_requirements.txt
fi
if have; then status+=("install: ok"); else
    status+=("install: MISSING some of $NEEDS")
    echo "still missing (the sections and tests that need them will fail):"
    for m in $NEEDS; do $PY -c "import $m" 2>/dev/null || echo "  $m"; done
fi
$PY - <<'EOF' || true
import torch
print(f"python torch {torch.__version__}, CUDA {torch.version.cuda}, available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    print(f"device 0: {torch.cuda.get_device_name(0)}, "
          f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.1f} GiB")
EOF
if $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    DEFAULT_BENCH_ARGS="--steps 64 --repeats 3"
    DEFAULT_GEMMA_ARGS="--shape 26b-a4b --steps 16 --repeats 3"
else
    echo "no CUDA device here: steps 3 and 4 run the CPU smoke modes (a dry run of this script)"
    DEFAULT_BENCH_ARGS="--tiny --device cpu --compile --compile-backend eager"
    DEFAULT_GEMMA_ARGS="--shape tiny --repeats 1"
fi

TESTS=${GPU_CHECK_TESTS:-tests/test_gpu_bench.py "tests/test_worker.py::test_out_of_memory_is_recognised_and_explained" \
"tests/test_worker.py::test_out_of_memory_fails_the_run_and_the_worker_takes_the_next_job" \
"tests/test_adapters_hf.py::test_dtype_and_device_come_from_the_configuration"}
step "2. GPU tests: $TESTS"
# shellcheck disable=SC2086
timeout --kill-after=10 "$(allow 90)" $PY -m pytest -q -rs -p no:cacheprovider --junitxml="$OUT/pytest.xml" \
    $TESTS 2>&1 | tee "$OUT/pytest.log"
rc=$?
status+=("GPU tests: exit $rc$( ((rc == 124)) && echo ' (timed out)')")

step "3. bench/bench_gpu.py ${BENCH_ARGS:-$DEFAULT_BENCH_ARGS}"
# SIGINT first (the JSON already holds every finished section), then SIGKILL 10 s later.
# shellcheck disable=SC2086
timeout --signal=INT --kill-after=10 "$(allow 300 "$GEMMA_S")" \
    $PY bench/bench_gpu.py ${BENCH_ARGS:-$DEFAULT_BENCH_ARGS} --json "$OUT/bench_gpu.json" 2>&1 |
    tee "$OUT/bench_gpu.log"
rc=$?
status+=("bench_gpu.py: exit $rc$( ((rc == 124)) && echo ' (timed out: bench_gpu.json keeps the finished sections)')")

step "4. bench/bench_gemma_gpu.py ${GEMMA_BENCH_ARGS:-$DEFAULT_GEMMA_ARGS}"
# Exit 1: the driver did not reproduce generate() (sequences or decoder passes differ); the JSON says which.
# shellcheck disable=SC2086
timeout --kill-after=10 "$(allow "$GEMMA_S")" \
    $PY bench/bench_gemma_gpu.py ${GEMMA_BENCH_ARGS:-$DEFAULT_GEMMA_ARGS} --json "$OUT/bench_gemma_gpu.json" 2>&1 |
    tee "$OUT/bench_gemma_gpu.log"
rc=$?
status+=("bench_gemma_gpu.py: exit $rc$( ((rc == 124)) && echo ' (timed out)')")

step "summary"
{
    echo "gpu_check.sh, $(date -u +%Y-%m-%dT%H:%M:%SZ), $((SECONDS - START)) s of a $BUDGET s budget"
    printf '%s\n' "${status[@]}"
    [[ -f "$OUT/bench_gpu.json" ]] && $PY - "$OUT/bench_gpu.json" <<'EOF'
import json, sys

d = json.load(open(sys.argv[1]))
print(f"GPU: {d['gpu']}; torch {d['torch']}; {d['dtype']}; max memory allocated: {d['memory']['max_allocated_bytes']}")
for name, section in d["sections"].items():
    ratios = [section["ratio"]] if "ratio" in section else [row["ratio"] for row in section.get("rows", [])]
    if name == "compiled":
        ratios += [section["vs_limit"], section["vs_forward"]]
    for r in ratios:
        target = "-" if r["target"] is None else f"<= {r['target']:.2f}"
        print(f"{name:10} {r['value']:7.2f}x (target {target}) = {r['numerator']} / {r['denominator']}")
for name, error in d["errors"].items():
    print(f"{name:10} FAILED: {error}")
EOF
    [[ -f "$OUT/bench_gemma_gpu.json" ]] && $PY - "$OUT/bench_gemma_gpu.json" <<'EOF'
import json, sys

d = json.load(open(sys.argv[1]))
m, p = d["memory"]["max_allocated_bytes"], d["decoder_passes"]
print(f"gemma {d['shape']}: engine / generate {d['ratio']['value']:.3f}x per denoising step "
      f"({d['ms_per_step']['engine']:.2f} / {d['ms_per_step']['generate']:.2f} ms); "
      f"passes {p['generate']} / {p['engine']}; sequences identical: {d['sequences_identical']}; "
      f"peak memory {m['generate']} / {m['engine']} bytes")
EOF
} | tee "$OUT/summary.txt"
}

main 2>&1 | tee "$OUT/gpu_check.log"
exit 0
