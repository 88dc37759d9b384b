"""bench/bench_violations.py runs end to end on the embedded model at a tiny setting and prints (and
writes as JSON) every table it promises. No timing is asserted."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_violations.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_violations", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_run_prints_every_table_and_writes_the_json(tmp_path, capsys):
    out_json = tmp_path / "v.json"
    bench = load_bench()
    argv = [
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--ns",
        "2",
        "3",
        "--lengths",
        "12",
        "16",
        "--k",
        "2",
        "--json",
        str(out_json),
    ]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("command: python bench/bench_violations.py --repeats 1")
    assert re.search(r"^machine: \d+ CPUs .*torch \S+ with \d+ threads, device cpu", out, re.MULTILINE), out
    number = r"\d+\.\d+"
    for length in (12, 16):
        for n in (2, 3):
            assert re.search(
                rf"^ +{length} +{n} +{number} +{number} +{number} +{number}x +{number}x +{number}x +{number}x",
                out,
                re.MULTILINE,
            ), (length, n, out)
            uni_sequences = 2 * (n - 1)  # k (n - 1) chain sequences; the AR energy runs k = 2
            assert re.search(
                rf"^ +{length} +{n} +{number} +{number} +{number}x +2 +{number} +{number}x "
                rf"+{uni_sequences}$",
                out,
                re.MULTILINE,
            ), (length, n, out)
        assert re.search(rf"^ +{length} +{number} +{number} +{number} +{number}x +{number}x$", out, re.MULTILINE), out
    assert re.search(r"^worst \(c\)/\(b\) = \d+\.\d+x at L=\d+, n=\d+ \(target <= 1\.10x\)", out, re.MULTILINE), out

    report = json.loads(out_json.read_text())
    assert report["command"] == "python bench/bench_violations.py " + " ".join(argv)
    assert {"cpus", "torch", "device", "torch_threads"} <= report["machine"].keys()
    assert report["model"]["name"] == "embedded"
    assert [(r["length"], r["n"]) for r in report["violations"]] == [(12, 2), (12, 3), (16, 2), (16, 3)]
    for r in report["violations"]:
        assert {"a_ms", "b_ms", "c_ms", "c_over_b", "c_over_b_paired", "c_over_a"} <= r.keys()
        assert all(len(ts) == 1 for ts in r["runs_ms"].values())
    assert [(r["n"], r["ar_sequences"], r["uni_sequences"]) for r in report["energy_stage"]] == [
        (2, 2, 2),
        (3, 2, 4),
        (2, 2, 2),
        (3, 2, 4),
    ]  # AR: k sequences; Uni-E: k (n - 1)
    assert [r["length"] for r in report["ar_pass"]] == [12, 16]
    assert all(r["batched_ms"] > 0 and r["singles_ms"] > 0 for r in report["ar_pass"])
