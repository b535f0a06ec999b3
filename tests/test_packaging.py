"""Packaging and layout: every package folder ships, and the repo root never shadows another distribution."""

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set()
    for base in (ROOT / "src", ROOT / "kernels"):
        for init in base.rglob("__init__.py"):
            found.add(".".join(init.parent.relative_to(base).parts))
    assert found == listed, f"add to / remove from [tool.setuptools] packages: {sorted(found ^ listed)}"


def test_kernels_folder_is_not_a_package():
    # A kernels/__init__.py would make the repo root's kernels/ importable as `kernels`, the name of an unrelated
    # PyPI package that diffusers and transformers probe for.
    assert not (ROOT / "kernels" / "__init__.py").exists()


def test_sla2_kernels_imports_from_its_own_folder():
    import sla2_kernels

    assert Path(sla2_kernels.__file__).resolve().parent == ROOT / "kernels" / "sla2_kernels"


def _run_from_root(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_diffusers_does_not_take_the_kernels_folder_for_a_package():
    # `python -c` and `python -m` put the repo root on sys.path, as `python -m pytest` does. Recent transformers
    # releases install the real `kernels` package: then both libraries must find that one, never our folder.
    code = ("import importlib.util, json, diffusers.utils.import_utils as d, transformers.utils.import_utils as t; "
            "s = importlib.util.find_spec('kernels'); "
            "print(json.dumps([d.is_kernels_available(), t.is_kernels_available(), "
            "None if s is None else [s.origin, list(s.submodule_search_locations or [])]]))")
    res = _run_from_root("-c", code)
    assert res.returncode == 0, res.stderr[-2000:]
    diffusers_sees, transformers_sees, spec = json.loads(res.stdout.strip().splitlines()[-1])
    origin = None if spec is None else spec[0]
    if origin is None or origin == "namespace":
        # nothing, or only our folder as a namespace portion: neither library may report kernels as available
        assert (diffusers_sees, transformers_sees) == (False, False)
    else:
        ours = str(ROOT / "kernels")
        assert not origin.startswith(ours + os.sep), spec
        assert all(not loc.startswith(ours) for loc in spec[1]), spec


def test_python_m_pytest_from_the_repo_root():
    res = _run_from_root("-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_packaging.py",
                         "-k", "every_package_folder or not_a_package")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "2 passed" in res.stdout


@pytest.mark.slow
def test_python_train_py_from_the_repo_root(tmp_path):
    res = _run_from_root("train.py", "trainer.max_steps=2", "logger=none",
                         f"output_root={tmp_path}/outputs", f"data.cache_dir={tmp_path}/cache")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]


def test_console_scripts_resolve_and_find_their_config():
    import importlib

    from sla2_train.commands import CONF_DIR

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"sla2-prepare", "sla2-make-synthetic"} <= set(scripts)
    for target in scripts.values():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), target
    assert Path(CONF_DIR) == ROOT / "conf" and (ROOT / "conf" / "prepare.yaml").is_file()
    assert sorted(p.name for p in (ROOT / "data").iterdir()) == ["README.md"]  # data/ documents the format only


def test_make_synthetic_writes_a_readable_dataset(tmp_path, capsys):
    from sla2_train.commands.make_synthetic import main
    from sla2_train.data import read_index

    n = int(torch.randint(3, 9, ()))
    assert main([str(tmp_path / "shards"), "--num-samples", str(n), "--samples-per-shard", "2"]) == 0
    assert f"wrote {n} samples" in capsys.readouterr().out
    assert read_index(tmp_path / "shards")["num_samples"] == n
    assert main([str(tmp_path / "shards")]) == 1  # an existing dataset is refused, one line
    assert capsys.readouterr().err.startswith("error: ")
