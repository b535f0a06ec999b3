"""sla2-testbed-breakdown: prompt following per captioned object, grouped by what the captions ask for."""

import json

import pytest

from sla2_train.testbed.breakdown import breakdown, main, markdown

ONE = "a white triangle moves up slowly over a slate striped background while the camera stays still"
TWO = ("a red square moves left quickly and a white circle moves down slowly over a grey gradient background "
       "while the camera pans right")


def _object(colour, shape, direction, speed, present, shape_right, direction_right):
    return {"colour": colour, "shape": shape, "direction": direction, "speed": speed, "present": present,
            "shape_right": shape_right, "direction_right": direction_right}


def _video(row, index, prompt, right, present, details=None):
    video = {"row": row, "prompt_index": index, "prompt": prompt, "seed": 0,
             "metrics": {"prompt_following": right, "prompt_following_present": present}}
    if details is not None:
        video["details"] = {"prompt_following": details}
    return video


def _report(folder, videos, row="sla2 0.97 int8/fp8"):
    folder.mkdir(parents=True)
    (folder / "eval.json").write_text(json.dumps({"rows": [{"name": "dense"}, {"name": row}], "videos": videos}))
    return folder / "eval.json"


def test_objects_are_grouped_with_their_own_outcomes(tmp_path):
    sla2 = "sla2 0.97 int8/fp8"
    videos = [
        _video("dense", 0, ONE, 1.0, 1.0, [_object("white", "triangle", "up", "slow", True, True, True)]),
        _video("dense", 1, TWO, 0.5, 1.0, [_object("red", "square", "left", "fast", True, True, False),
                                           _object("white", "circle", "down", "slow", True, True, True)]),
        _video(sla2, 0, ONE, 0.0, 0.0, [_object("white", "triangle", "up", "slow", False, False, False)]),
        _video(sla2, 1, TWO, 0.5, 0.5, [_object("red", "square", "left", "fast", True, True, True),
                                        _object("white", "circle", "down", "slow", False, False, False)]),
    ]
    path = _report(tmp_path / "eval-stage2-0.97" / "eval" / "x" / "y", videos)
    result = breakdown([path], "colour")
    assert result["columns"] == ["dense", "stage2-0.97"] and result["per_object"]
    white, red = result["groups"]["white"], result["groups"]["red"]
    assert white["dense"] == {"objects": 2, "right": 1.0, "present": 1.0}
    assert white["stage2-0.97"] == {"objects": 2, "right": 0.0, "present": 0.0}
    assert red["dense"]["right"] == 0.0 and red["stage2-0.97"]["right"] == 1.0
    by_count = breakdown([path], "objects")["groups"]
    assert by_count["1"]["dense"]["objects"] == 1 and by_count["2"]["stage2-0.97"]["present"] == 0.5
    assert breakdown([path], "camera")["groups"]["pans right"]["dense"]["objects"] == 2
    assert "| white | 2 | 1.00 / 1.00 | 0.00 / 0.00 |" in markdown(result)


def test_reports_without_details_give_objects_their_videos_fractions(tmp_path):
    sla2 = "sla2 0.9 bf16"
    path = _report(tmp_path / "run", [_video("dense", 0, TWO, 0.5, 1.0), _video(sla2, 0, TWO, 0.0, 0.5)], row=sla2)
    result = breakdown([path], "shape")
    assert not result["per_object"] and result["columns"] == ["dense", str(tmp_path / "run")]
    assert result["groups"]["square"]["dense"] == {"objects": 1, "right": 0.5, "present": 1.0}
    assert "their objects carry their video's fractions" in markdown(result)


def test_bad_input_is_one_line(tmp_path, capsys):
    path = _report(tmp_path / "run", [_video("dense", 0, ONE, 1.0, 1.0)])
    assert main([str(path), "--by", "size"]) == 2
    assert capsys.readouterr().err.strip() == "error: --by 'size': choose one of ['colour', 'shape', 'direction', " \
                                              "'speed', 'objects', 'camera']"
    other = tmp_path / "vbench"
    other.mkdir()
    (other / "eval.json").write_text(json.dumps({"rows": [{"name": "dense"}, {"name": "s"}], "videos": [
        {"row": "s", "prompt": ONE, "seed": 0, "metrics": {"temporal_flickering": 0.9}}]}))
    assert main([str(other)]) == 2
    assert "has no prompt_following scores" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([])
