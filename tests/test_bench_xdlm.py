"""bench/xdlm_compare.py runs end to end on the embedded models at a tiny setting and writes the
JSON and markdown it promises, with the structure the docs read. No quality is asserted."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "xdlm_compare.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("xdlm_compare", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass (and a worker's pickled task) look the module up
    spec.loader.exec_module(module)
    return module


def test_tiny_comparison_writes_every_number(tmp_path, capsys):
    bench = load_bench()
    cells = ["mdlm:xdlm_ancestral", "xdlm:xdlm_ancestral", "mdlm:xdlm_revise", "xdlm:xdlm_revise"]
    cells.append("mdlm:xdlm_revise@0.1")  # a control: the MDLM with the XDLM's k
    argv = ["--seeds", "2", "--steps", "8", "4", "--cells", *cells, "--out", str(tmp_path), "--no-png"]
    report = bench.main(argv)
    out = capsys.readouterr().out
    assert out.startswith("command: python bench/xdlm_compare.py --seeds 2")
    assert re.search(r"^machine: \d+ CPUs .*1 worker\(s\) x 1 thread\(s\)", out, re.MULTILINE), out

    written = json.loads((tmp_path / "xdlm_comparison.json").read_text())
    assert written == json.loads(json.dumps(report))
    assert written["steps"] == [4, 8] and written["seeds"] == 2 and written["gen_length"] == 64
    assert written["models"]["mdlm"]["k"] == 0.0 and 0.0 < written["models"]["xdlm"]["k"] < 1.0
    mdlm = written["understanding"]["mdlm"]
    assert mdlm["held_out_nelbo"] > 0 and mdlm["k"] == 0.0
    assert written["understanding"]["xdlm"] is None or written["understanding"]["xdlm"]["held_out_nelbo"] > 0

    by = {(c["model"], c["sampler"], c["xdlm_k"], c["steps"]): c for c in written["cells"]}
    assert len(by) == len(cells) * 2
    assert [c["own_k"] for c in written["cells"]].count(False) == 2  # the control, at T = 4 and 8
    for (model, sampler, k, steps), c in by.items():
        assert c["samples"] == 2 and len(c["per_seed"]["valid"]) == 2 and sum(c["per_seed"]["valid"]) == c["valid"]
        assert 0 <= c["valid_ci95"][0] <= c["valid_rate"] <= c["valid_ci95"][1] <= 1
        assert 0 <= c["sentence_ci95"][0] <= c["sentence_rate"] <= c["sentence_ci95"][1] <= 1
        assert c["sentences"] >= c["valid_sentences"] >= 0
        assert c["revisions_ci95"][0] <= c["revisions_per_sample"] <= c["revisions_ci95"][1]
        assert c["masks_left"] == 0, "every sampler ends with no mask"
        assert c["steps_per_sample"] == (steps + 1 if sampler == "xdlm_ancestral" else steps)
        assert c["own_k"] == (k == written["models"][model]["k"])
        if k == 0:  # MDLM's samplers: no token ever changes or goes back to the mask
            assert c["revisions_per_sample"] == 0 and c["remasks_per_sample"] == 0
        if sampler == "xdlm_revise":
            assert c["remasks_per_sample"] == 0
            assert max(c["per_seed"]["revisions"]) <= math.floor(64 * c["xdlm_k"] / (1 - c["xdlm_k"]) + 1e-9)

    rows = {(r["sampler"], r["steps"]) for r in written["comparisons"]}
    assert rows == {(s, t) for s in ("xdlm_ancestral", "xdlm_revise") for t in (4, 8)}
    for r in written["comparisons"]:
        assert r["reference_steps"] == 8
        assert r["xdlm_minus_mdlm_ci95"][0] <= r["xdlm_minus_mdlm"] <= r["xdlm_minus_mdlm_ci95"][1]
        assert r["verdict"] in ("xdlm higher", "mdlm higher", "no clear difference")
        if r["steps"] == 8:
            assert r["mdlm_drop"] == r["xdlm_drop"] == 0.0

    table = (tmp_path / "xdlm_comparison_table.md").read_text()
    assert table.count("| MDLM | xdlm_ancestral | 0 |") == 2 and "held-out NELBO" in table
    assert table.count("| MDLM (control) | xdlm_revise | 0.1 |") == 2
    assert "XDLM - MDLM valid" in table
    assert not (tmp_path / "xdlm_comparison.png").exists()

    fig = bench.figure(written["cells"], 2, 64)
    assert len(fig.data) == 3 * len(cells)  # one line per model x sampler in each of the 3 panels
    assert sum(trace.showlegend for trace in fig.data) == len(cells)
    assert fig.layout.xaxis.type == "log" and fig.layout.title.text


def test_newcombe_interval_matches_a_published_example():
    # Newcombe (1998), Statistics in Medicine 17:873, table II example (56/70 vs 48/80): 0.0524 to 0.3339.
    d, low, high = load_bench().newcombe_difference(56, 70, 48, 80)
    assert math.isclose(d, 0.2) and math.isclose(low, 0.0524, abs_tol=1e-3) and math.isclose(high, 0.3339, abs_tol=1e-3)


def test_model_card_gets_an_xdlm_section(tmp_path):
    """bench/evaluate_embedded.py --xdlm-only re-measures the XDLM alone (tiny here) and appends its
    section to the card, keeping the other models' entries of evaluation.json."""
    import shutil

    root = Path(__file__).resolve().parents[1]
    directory = tmp_path / "embedded"
    shutil.copytree(root / "models" / "embedded", directory)
    before = json.loads((directory / "evaluation.json").read_text())
    spec = importlib.util.spec_from_file_location("evaluate_embedded", root / "bench" / "evaluate_embedded.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--dir", str(directory), "--xdlm-only", "--samples", "2"])
    after = json.loads((directory / "evaluation.json").read_text())
    assert {k: v for k, v in after.items() if k != "xdlm"} == {k: v for k, v in before.items() if k != "xdlm"}
    assert after["xdlm"]["ancestral"]["samples"] == after["xdlm"]["revise"]["samples"] == 2
    card = (directory / "MODEL_CARD.md").read_text()
    assert card.count("## `xdlm.safetensors`") == 1 and "held-out NELBO **" in card.split("## `xdlm")[1]
    assert "2 seeded samples each" in card and "`xdlm_revise`, S = 64 steps" in card
    assert card.startswith((root / "models" / "embedded" / "MODEL_CARD.md").read_text().split("\n## `xdlm")[0])
