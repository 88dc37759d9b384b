"""bench/bench_gpu.py runs every section end to end on a tiny model on the CPU (the LLaDA-8B-shaped run needs a
GPU), and without a GPU its default invocation says it skipped and exits 0; bench/gpu_check.sh, the prepared
device check, is valid bash. No timing is asserted.

On a machine with CUDA (bench/gpu_check.sh runs this file there) the tests marked `cuda` also run: every section
of the benchmark on the GPU in bf16, and a real CUDA out-of-memory error in a run and the recovery from it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "bench_gpu.py"
GPU_CHECK = ROOT / "bench" / "gpu_check.sh"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
SECTIONS = ("engine", "violations", "uni", "lookahead", "compiled")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (bench/gpu_check.sh)")


def run_bench(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=timeout, env=ENV, check=False
    )


def ratios(results: dict) -> list[tuple[str, dict]]:
    """Every ratio of the results, with the section it belongs to."""
    out = []
    for name, section in results["sections"].items():
        for key in ("ratio", "ratio_no_store", "vs_limit", "vs_forward"):
            if key in section:
                out.append((name, section[key]))
        out += [(name, row["ratio"]) for row in section.get("rows", [])]
    return out


def check_results(results: dict, device: str) -> None:
    """The JSON of a run of every section: its keys, and every ratio positive with what it divides by."""
    assert results["complete"] is True and results["errors"] == {}
    assert list(results["sections"]) == list(SECTIONS)
    assert results["device"].startswith(device)
    assert results["peak_tflops"] > 0 and "H200" in results["peak_source"]
    assert set(results["memory"]) == {"weights_bytes", "max_allocated_bytes", "per_section_max_allocated_bytes"}
    found = ratios(results)
    assert len(found) == 10, found  # engine 2, violations 2, uni 2, lookahead 1, compiled 3
    for name, r in found:
        assert r["value"] > 0 and r["numerator_ms"] > 0 and r["denominator_ms"] > 0, (name, r)
        assert r["value"] == pytest.approx(r["numerator_ms"] / r["denominator_ms"]), (name, r)
        assert r["numerator"] and r["denominator"] and r["numerator"] != r["denominator"], (name, r)
    s = results["sections"]
    assert s["engine"]["ratio"]["target"] == 1.10 and "bare" in s["engine"]["ratio"]["denominator"]
    assert {"a", "b", "b'"} == set(s["engine"]["ms_per_step"])
    for section in ("violations", "uni"):
        for row in s[section]["rows"]:
            assert row["ratio"]["target"] == 1.10
            assert "one batched forward" in row["ratio"]["denominator"], row["ratio"]
    assert [row["n"] for row in s["violations"]["rows"]] == [2, 4]
    assert [(row["n"], row["k"], row["sequences"]) for row in s["uni"]["rows"]] == [(2, 4, 4), (3, 4, 8)]
    lookahead = s["lookahead"]
    assert lookahead["k"] == 8 and "8 copies" in lookahead["ratio"]["denominator"]
    assert lookahead["steps_per_decode"] >= 1 and lookahead["tokens_per_step"] >= 1
    compiled = s["compiled"]
    assert compiled["forward_flops"] > 0 and compiled["limit_ms"] > 0
    assert "compute limit" in compiled["vs_limit"]["denominator"]
    assert "compiled" in compiled["ratio"]["denominator"] and compiled["ratio"]["target"] == 1.10
    assert "compiled forward alone" in compiled["vs_forward"]["denominator"]


def test_tiny_model_on_the_cpu_runs_every_section_and_writes_json(tmp_path):
    pytest.importorskip("transformers")  # the model is a transformers Llama (as tests/test_adapters_hf.py)
    out_json = tmp_path / "bench.json"
    # --compile-backend eager: dynamo without inductor's code generation, seconds instead of a minute on a CPU.
    done = run_bench("--tiny", "--device", "cpu", "--compile", "--compile-backend", "eager", "--json", str(out_json))
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "GPU: none (CPU run)" in out
    assert "prompt 16 + generation 32 = 48 tokens, 32 steps" in out
    for label in ("(a) bare loop", "(b) engine + store", "(b') engine, no store"):
        assert re.search(rf"^{re.escape(label)} +\d+\.\d+ +\d+\.\d+x", out, re.MULTILINE), (label, out)
    assert re.search(r"^ratio engine\+store / bare = \d+\.\d+x \(target <= 1\.10x\)", out, re.MULTILINE), out
    assert "same tokens from a, b and b': " in out  # reported, not asserted: random weights make near-ties
    for title in ("== engine", "== violations", "== uni", "== lookahead", "== compiled"):
        assert title in out, out
    # each ratio line names what it divides by
    assert re.search(r"^n =   2: \d+\.\d+x = .* ms \[violation pass over 2 tokens.*\] / .* ms \[one batched", out, re.M)
    assert re.search(
        r"^n =   3: \d+\.\d+x = .* ms \[Uni-E chain, k=4, n=3.*\] / .* ms \[one batched forward of 8", out, re.M
    )
    assert re.search(
        r"^lookahead: \d+\.\d+x = .* \[lookahead \(K=8\).*\] / .* \[one batched forward of 8 copies", out, re.M
    )
    assert re.search(r"^\(c0\) vs the compute limit: \d+\.\d+x = .*TFLOP at 790 TFLOP/s\]", out, re.M)
    assert re.search(r"^engine vs compiled loop: \d+\.\d+x = .*\[\(c\) bare loop on the compiled forward", out, re.M)
    results = json.loads(out_json.read_text())
    check_results(results, "cpu")
    assert results["gpu"] is None and results["memory"]["max_allocated_bytes"] is None
    assert results["sections"]["compiled"]["backend"] == "eager"
    assert results["model"]["layers"] == 2 and results["sequence"]["length"] == 48


def test_without_compile_the_compiled_section_is_not_run(capsys):
    pytest.importorskip("transformers")
    from bench import bench_gpu  # in this process: one cheap section, nothing compiled

    assert bench_gpu.main(["--tiny", "--device", "cpu", "--sections", "violations", "--violation-ns", "2"]) == 0
    out = capsys.readouterr().out
    assert "(c) torch.compile forward: not run" in out  # compiling is for the GPU run
    assert "== engine" not in out and "== violations" in out


def test_bad_arguments_are_refused(capsys):
    from bench import bench_gpu

    with pytest.raises(SystemExit) as exit_:
        bench_gpu.parse_args(["--tiny", "--sections", "engine,nope"])
    assert exit_.value.code == 2 and "unknown nope" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device: the benchmark would run")
def test_without_a_gpu_the_default_run_is_skipped():
    done = run_bench()
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("skipped: no CUDA device")


def test_the_gpu_check_script_is_valid_bash_and_writes_under_out():
    done = subprocess.run(["bash", "-n", str(GPU_CHECK)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    text = GPU_CHECK.read_text()
    assert 'bench/bench_gpu.py ${BENCH_ARGS:-$DEFAULT_BENCH_ARGS} --json "$OUT/bench_gpu.json"' in text
    assert "timeout" in text and "tests/test_gpu_bench.py" in text and "nvidia-smi" in text
    # never installs torch (a CPU wheel on the GPU machine would hide the GPU)
    assert not re.search(r"pip[^\n]* install[^\n]*\btorch\b", text)


# ---- on a CUDA device (bench/gpu_check.sh) ---------------------------------------------------------------------
@cuda
def test_cuda_bf16_every_section(tmp_path):
    pytest.importorskip("transformers")
    out_json = tmp_path / "bench.json"
    done = run_bench(
        "--tiny",
        "--device",
        "cuda",
        "--dtype",
        "bf16",
        "--compile",
        "--compile-backend",
        "eager",
        "--json",
        str(out_json),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(out_json.read_text())
    check_results(results, "cuda")
    assert results["dtype"] == "bf16" and results["gpu"] == torch.cuda.get_device_name(0)
    memory = results["memory"]
    assert memory["max_allocated_bytes"] >= memory["weights_bytes"] > 0
    assert set(memory["per_section_max_allocated_bytes"]) == set(SECTIONS)


class _OutOfMemoryOnCall:
    """A denoiser whose forward number `fail_on` holds 256 MiB on the GPU and then asks the CUDA allocator for an
    impossible block: a real torch.OutOfMemoryError, raised with device memory still referenced by its frame."""

    def __init__(self, inner, fail_on: int) -> None:
        self._inner, self.calls, self.fail_on = inner, 0, fail_on

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def logits(self, ids):
        self.calls += 1
        if self.calls == self.fail_on:
            held = torch.empty(2**28, dtype=torch.uint8, device=ids.device)  # noqa: F841 (held by the traceback)
            torch.empty(2**50, dtype=torch.uint8, device=ids.device)  # 1 PiB
        return self._inner.logits(ids)


@cuda
def test_cuda_out_of_memory_fails_the_run_and_the_next_run_recovers(tmp_path):
    from explorer.adapters.embedded import load_embedded
    from explorer.decoding.config import DecodeConfig
    from explorer.decoding.engine import run_decode
    from explorer.store.database import StoreWriter, TrajectoryStore
    from explorer.worker import free_device_memory, is_out_of_memory, out_of_memory_message

    denoiser = load_embedded(device="cuda")
    prompt = denoiser.encode("once upon a time")
    config = DecodeConfig(gen_length=16, steps=8, violations=False)
    reference = run_decode(denoiser, prompt, config).token_ids
    store = TrajectoryStore(f"sqlite:///{tmp_path / 'oom.db'}")
    free_device_memory()
    before = torch.cuda.memory_allocated()

    writer = StoreWriter(store, denoiser.token_text)
    with pytest.raises(torch.OutOfMemoryError) as caught:
        run_decode(_OutOfMemoryOnCall(denoiser, fail_on=3), prompt, config, [writer])
    assert is_out_of_memory(caught.value)
    assert out_of_memory_message(caught.value, "cuda:0").startswith("out of memory on cuda:0: the run was stopped")
    run = store.get_run(writer.run_id)
    assert run["status"] == "failed" and "out of memory" in run["error"].lower() and run["n_steps"] == 2
    assert torch.cuda.memory_allocated() >= before + 2**28  # the failed step's block, held by the traceback
    del caught
    free_device_memory()  # what the worker does after an out-of-memory error
    assert torch.cuda.memory_allocated() < before + 2**28

    again = StoreWriter(store, denoiser.token_text)
    result = run_decode(denoiser, prompt, config, [again])
    assert result.status == "completed" and result.token_ids == reference
    assert store.get_run(again.run_id)["status"] == "completed"


# ---- DiffusionGemma: generate() against the engine (bench/bench_gemma_gpu.py) ---------------------
GEMMA_BENCH = ROOT / "bench" / "bench_gemma_gpu.py"


def test_gemma_bench_tiny_on_the_cpu_reproduces_generate_and_writes_json(tmp_path):
    pytest.importorskip("transformers")
    out_json = tmp_path / "gemma.json"
    done = subprocess.run(
        [sys.executable, str(GEMMA_BENCH), "--shape", "tiny", "--repeats", "1", "--json", str(out_json)],
        capture_output=True, text=True, timeout=300, env=ENV, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "GPU: none (CPU run)" in out
    for label in (r"\(a\) model\.generate\(\)", r"\(b\) the explorer's engine"):
        assert re.search(rf"^{label} +\d+\.\d+ +\d+\.\d+ +8 +n/a \(CPU\)$", out, re.M), (label, out)
    assert re.search(r"^ratio engine / generate = \d+\.\d+x \(", out, re.M), out
    assert "decoder passes: generate [8], engine [8] (its step count [8]), expected 8: equal" in out
    assert "final sequences of every run of (a) and (b): identical (32 tokens)" in out
    last = json.loads(out.strip().splitlines()[-1])  # the JSON line ends the output
    results = json.loads(out_json.read_text())
    assert last == results
    assert results["ok"] is True and results["sequences_identical"] is True
    assert results["shape"] == "tiny" and results["device"] == "cpu" and results["gpu"] is None
    assert results["decoder_passes"] == {
        "generate": [8], "engine": [8], "engine_steps": [8], "expected": 8, "equal": True,
    }  # fmt: skip
    settings = results["settings"]
    assert (settings["prompt_length"], settings["canvases"], settings["max_denoising_steps"]) == (16, 2, 4)
    assert settings["early_stop"] is False and settings["repeats"] == 1
    assert results["model"]["layers"] == 2 and results["model"]["canvas_length"] == 8
    steps = results["ms_per_step"]
    assert set(steps) == {"generate", "engine"} and min(steps.values()) > 0
    assert results["ratio"]["value"] == pytest.approx(steps["engine"] / steps["generate"])
    assert [len(v) for v in results["ms_per_run"].values()] == [1, 1]
    assert results["memory"]["max_allocated_bytes"] == {"generate": None, "engine": None}


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device: the benchmark would run")
def test_gemma_bench_without_a_gpu_the_26b_shape_is_skipped():
    done = subprocess.run(
        [sys.executable, str(GEMMA_BENCH)], capture_output=True, text=True, timeout=120, env=ENV, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("skipped: no CUDA device")


def test_the_gpu_check_runs_the_gemma_bench_last():
    text = GPU_CHECK.read_text()
    step = 'bench/bench_gemma_gpu.py ${GEMMA_BENCH_ARGS:-$DEFAULT_GEMMA_ARGS} --json "$OUT/bench_gemma_gpu.json"'
    assert step in text and text.index(step) > text.index("bench/bench_gpu.py ${BENCH_ARGS")
    assert 'DEFAULT_GEMMA_ARGS="--shape 26b-a4b' in text and 'DEFAULT_GEMMA_ARGS="--shape tiny' in text
