"""sla2-eval-runs: groups of eval.py reports (one trained model a run) against each other, across runs."""

import json
import math
import random

import pytest

from sla2_train.evaluation.across_runs import across_runs, main
from sla2_train.evaluation.compare import CompareError

ROW = "sla2 0.97 int8/fp8"
KEYS = [(f"a red circle moves {d}", seed) for d in ("left", "right", "up", "down") for seed in (0, 1)]


def _run(folder, rng, level, keys=KEYS, extra_metric=True):
    """An eval.json of one trained model: prompt following around `level`, PSNR, and (extra_metric) flicker."""
    videos = []
    for i, (p, s) in enumerate(keys):
        m = {"prompt_following": float(rng.random() < level), "psnr": rng.uniform(10, 20)}
        if extra_metric:
            m["temporal_flickering"] = rng.uniform(0.9, 1.0)
        videos.append({"row": ROW, "prompt": p, "prompt_index": i, "seed": s, "metrics": m})
    videos += [{"row": "dense", "prompt": p, "prompt_index": i, "seed": s, "metrics": {"prompt_following": 1.0}}
               for i, (p, s) in enumerate(keys)]
    folder.mkdir(parents=True)
    (folder / "eval.json").write_text(json.dumps({"rows": [{"name": "dense"}, {"name": ROW}], "videos": videos}))
    return folder


def _means(folder, metric, keys):
    videos = {(v["prompt"], v["seed"]): v["metrics"] for v in json.loads((folder / "eval.json").read_text())["videos"]
              if v["row"] == ROW}
    return sum(videos[k][metric] for k in keys) / len(keys)


def test_each_group_is_its_runs_means_and_the_difference_adds_their_errors(tmp_path):
    rng = random.Random(3)
    a = [_run(tmp_path / f"a{i}", rng, 0.6) for i in range(3)]
    b = [_run(tmp_path / f"b{i}", rng, 0.2) for i in range(2)]
    result = across_runs(a, [f / "eval.json" for f in b])
    assert result["videos"] == len(KEYS) and set(result["metrics"]) == {"prompt_following", "psnr",
                                                                          "temporal_flickering"}
    for m, stat in result["metrics"].items():
        errs = []
        for side, runs in (("a", a), ("b", b)):
            means = [_means(f, m, KEYS) for f in runs]
            mean = sum(means) / len(means)
            sem = math.sqrt(sum((x - mean) ** 2 for x in means) / (len(means) - 1) / len(means))
            assert stat[side]["runs"] == pytest.approx(means)
            assert stat[side]["mean"] == pytest.approx(mean) and stat[side]["sem"] == pytest.approx(sem)
            errs.append(sem)
        assert stat["diff"] == pytest.approx(stat["a"]["mean"] - stat["b"]["mean"])
        assert stat["sem"] == pytest.approx(math.hypot(*errs))


def test_only_videos_and_metrics_every_run_has_are_used(tmp_path, capsys):
    rng = random.Random(5)
    a = [_run(tmp_path / "a0", rng, 0.5), _run(tmp_path / "a1", rng, 0.5, keys=KEYS + [("a blue square", 0)])]
    b = [_run(tmp_path / "b0", rng, 0.5, keys=KEYS[:6]), _run(tmp_path / "b1", rng, 0.5, extra_metric=False)]
    result = across_runs(a, b)
    assert result["videos"] == 6 and "temporal_flickering" not in result["metrics"]
    assert result["a"][1]["left_out"] == 3 and result["b"][0]["left_out"] == 0
    assert result["metrics"]["psnr"]["a"]["runs"][0] == pytest.approx(_means(a[0], "psnr", KEYS[:6]))
    assert main(["--a", *map(str, a), "--b", *map(str, b), "--out", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "each run's mean over the 6 videos" in out and "left out, not in every run" in out
    assert json.loads((tmp_path / "r.json").read_text())["videos"] == 6


def test_one_run_a_side_has_no_spread_and_says_so(tmp_path, capsys):
    rng = random.Random(9)
    result = across_runs([_run(tmp_path / "a", rng, 0.5)], [_run(tmp_path / "b", rng, 0.5)])
    stat = result["metrics"]["psnr"]
    assert stat["a"]["sem"] is None and stat["sem"] is None and stat["diff"] is not None
    assert main(["--a", str(tmp_path / "a"), "--b", str(tmp_path / "b")]) == 0
    assert "a group of one run has no spread across runs" in capsys.readouterr().out


def test_bad_input_is_one_line(tmp_path, capsys):
    rng = random.Random(1)
    a = _run(tmp_path / "a", rng, 0.5)
    b = _run(tmp_path / "b", rng, 0.5, keys=[("a green star", 0)])
    with pytest.raises(CompareError, match="share no"):
        across_runs([a], [b])
    assert main(["--a", str(a), "--b", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path / 'missing'}: no such file or folder"
    with pytest.raises(CompareError, match="group B: no runs given"):
        across_runs([a], [])
