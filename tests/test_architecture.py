"""The house plan holds: imports point down the layers (.importlinter, ARCHITECTURE.md),
and the contract really catches an import that points up."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    # Run as a module of this interpreter, so the venv's import-linter is used.
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                          env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"}, timeout=600)


def test_imports_point_down_the_layers():
    r = _lint(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 kept, 0 broken" in r.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    shutil.copytree(ROOT / "workbench", tmp_path / "workbench", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    images = tmp_path / "workbench" / "data" / "images.py"
    images.write_text(images.read_text() + "\n\ndef _up():\n    from workbench.search import sweep  # noqa\n")
    r = _lint(tmp_path)
    assert r.returncode != 0
    assert "workbench.data is not allowed to import workbench.search" in r.stdout, r.stdout
    assert "workbench.data.images -> workbench.search" in r.stdout


@pytest.mark.parametrize("layer", ["workbench.core", "workbench.errors"])
def test_the_bottom_layers_import_nothing_heavy(layer):
    # core and errors are imported by everything, the CLI's --help included.
    code = (f"import sys, importlib, pkgutil; m = importlib.import_module({layer!r}); "
            "[importlib.import_module(f'{m.__name__}.{x.name}') for x in pkgutil.iter_modules(getattr(m, '__path__', []))]; "
            "heavy = [h for h in ('torch', 'sklearn', 'pandas', 'timm', 'matplotlib') if h in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
