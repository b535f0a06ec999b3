"""Every package folder ships: pyproject lists packages by hand (src/ plus kernels/ as sla2_kernels)."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"sla2_kernels"} if (ROOT / "kernels" / "__init__.py").exists() else set()
    for init in (ROOT / "src").rglob("__init__.py"):
        found.add(".".join(init.parent.relative_to(ROOT / "src").parts))
    assert found == listed, f"add to / remove from [tool.setuptools] packages: {sorted(found ^ listed)}"


def test_sla2_kernels_imports_from_the_installed_mapping():
    import sla2_kernels

    assert Path(sla2_kernels.__file__).resolve().parent == ROOT / "kernels"
