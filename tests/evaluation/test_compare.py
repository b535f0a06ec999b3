"""sla2-eval-compare: two eval.py reports' videos paired by prompt and seed, A − B ± standard error."""

import json
import math
import random

import pytest

from sla2_train.evaluation.compare import CompareError, compare, main


def _report(rows, videos):
    return {"rows": [{"name": n, "metrics": {}} for n in rows], "videos": videos, "settings": {}}


def _videos(row, keys, rng, shift=0.0):
    return [{"row": row, "prompt": p, "prompt_index": i, "seed": s,
             "metrics": {"psnr": rng.uniform(10, 20) + shift, "prompt_following": float(rng.random() < 0.3)}}
            for i, (p, s) in enumerate(keys)]


def _write(folder, report):
    folder.mkdir(parents=True)
    (folder / "eval.json").write_text(json.dumps(report))
    return folder


@pytest.fixture
def runs(tmp_path):
    rng = random.Random(7)
    keys = [(f"a red circle moves {d}", seed) for d in ("left", "right", "up", "down", "still") for seed in (0, 1)]
    a = _videos("sla2 0.97 int8/fp8", keys, rng)
    # B: the same videos in another order (indices differ: pairing is by prompt text and seed), one more prompt
    b = _videos("sla2 0.97 int8/fp8", list(reversed(keys)) + [("a blue square", 0)], rng, shift=1.0)
    dense = _videos("dense", keys, rng)
    run_a = _write(tmp_path / "a" / "eval" / "run", _report(["dense", "sla2 0.97 int8/fp8"], a + dense))
    run_b = _write(tmp_path / "b", _report(["dense", "sla2 0.97 int8/fp8"], b))
    return tmp_path, {(v["prompt"], v["seed"]): v["metrics"] for v in a}, \
        {(v["prompt"], v["seed"]): v["metrics"] for v in b}, {(v["prompt"], v["seed"]): v["metrics"] for v in dense}


def test_differences_are_paired_by_prompt_and_seed(runs):
    root, a, b, _ = runs
    result = compare(root / "a", root / "b" / "eval.json")
    assert result["unpaired"] == {"a": 0, "b": 1}
    for k in ("psnr", "prompt_following"):
        diffs = [a[key][k] - b[key][k] for key in a]
        mean = sum(diffs) / len(diffs)
        sem = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1) / len(diffs))
        stat = result["paired"][k]
        assert stat["n"] == 10
        assert stat["diff"] == pytest.approx(mean) and stat["sem"] == pytest.approx(sem)
        assert stat["base_mean"] == pytest.approx(sum(b[key][k] for key in a) / 10)
    assert result["paired"]["psnr"]["diff"] == pytest.approx(-1.0, abs=3.0)  # B was drawn 1 dB higher


def test_a_named_row_is_compared_dense_included(runs):
    root, a, _, dense = runs
    result = compare(root / "a", root / "a", row_a="sla2 0.97 int8/fp8", row_b="dense")
    assert result["b"]["row"] == "dense"
    diffs = [a[key]["psnr"] - dense[key]["psnr"] for key in a]
    assert result["paired"]["psnr"]["diff"] == pytest.approx(sum(diffs) / len(diffs))


def test_the_command_prints_the_table_and_writes_json(runs, capsys):
    root, a, *_ = runs
    out = root / "cmp.json"
    assert main([str(root / "a"), str(root / "b"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| PSNR vs dense (dB) |" in text and "| Prompt following |" in text
    assert "left out, without a partner: 0 videos of A, 1 of B" in text
    a_mean = sum(m["psnr"] for m in a.values()) / len(a)  # A's column: its own mean over the paired videos
    assert f"| PSNR vs dense (dB) | {a_mean:.4g} |" in text
    assert json.loads(out.read_text())["paired"]["psnr"]["n"] == 10


@pytest.mark.parametrize("case, message", [
    ("missing", "no such file or folder"),
    ("two", "2 eval.json files under it; name one"),
    ("bad_json", "not a readable eval.json"),
    ("not_report", "not an eval.py report"),
    ("row", "--row-b 'sla2 0.5': "),
    ("several", "has 2 rows besides dense"),
    ("disjoint", "share no (prompt, seed) video"),
])
def test_bad_inputs_are_one_line(runs, capsys, case, message):
    root, *_ = runs
    a, b, extra = str(root / "a"), str(root / "b"), []
    if case == "missing":
        b = str(root / "nowhere")
    elif case == "two":
        _write(root / "b" / "again", _report(["dense"], []))
    elif case == "bad_json":
        (root / "b" / "eval.json").write_text("{not json")
    elif case == "not_report":
        (root / "b" / "eval.json").write_text("[]")
    elif case == "row":
        extra = ["--row-b", "sla2 0.5"]
    elif case == "several":
        _write(root / "c", _report(["dense", "sla2 0.9", "sla2 0.97"], []))
        b = str(root / "c")
    elif case == "disjoint":
        _write(root / "d", _report(["sla2 0.97 int8/fp8"], _videos("sla2 0.97 int8/fp8", [("other", 3)], random.Random(0))))
        b = str(root / "d")
    assert main([a, b, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    with pytest.raises(CompareError):
        compare(a, b, row_b=extra[1] if extra else None)


def test_the_report_tools_start_without_the_pipeline():
    """A chain runs a dozen of them: they read JSON, and importing torch and diffusers cost each 5 s."""
    import subprocess
    import sys

    code = ("import sys, sla2_train.evaluation.compare, sla2_train.testbed.breakdown; "
            "print(sorted(m for m in ('torch', 'diffusers', 'lightning') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
