"""The CLI starts without the heavy libraries, and ``import workbench`` exports the flow."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
import time

import pytest

import workbench
from workbench.cli.parser import COMMANDS

HEAVY = ("torch", "torchvision", "timm", "sklearn", "matplotlib", "pandas", "scipy")

# Builds the parser and prints every help text in one process, then lists the heavy
# modules it imported (none expected).
_EVERY_HELP = f"""
import contextlib, io, sys
from workbench.cli import main
from workbench.cli.parser import COMMANDS
for argv in [[], *[[c] for c in COMMANDS], ["cache", "ls"], ["cache", "verify"], ["cache", "gc"]]:
    with contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            main([*argv, "--help"])
        except SystemExit as e:
            assert e.code == 0, (argv, e.code)
    assert "usage: workbench" in out.getvalue(), argv
print(sorted(m for m in {HEAVY!r} if m in sys.modules))
"""


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_every_help_imports_no_heavy_library():
    p = _python(_EVERY_HELP)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]", p.stdout


def test_import_workbench_is_light():
    p = _python(f"import sys, workbench, workbench.cli; print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


def test_help_wall_time_is_reported():
    """Not a timing assertion (shared CI machines vary): the figure is printed for the record."""
    start = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "workbench.cli", "--help"], capture_output=True, text=True, timeout=300)
    took = time.perf_counter() - start
    assert p.returncode == 0 and "COMMAND" in p.stdout
    print(f"`python -m workbench.cli --help`: {took:.2f} s")


def test_every_command_has_a_function():
    parser_commands = {"demo", "backbones", "extract", "cache", "sweep", "run", "report", "finetune",
                       "baselines", "cam", "export", "predict", "serve", "compare"}
    assert set(COMMANDS) == parser_commands
    from workbench.cli.app import _command

    for name in COMMANDS:
        assert callable(_command(name)), name


def test_help_texts_show_the_objects_defaults():
    """The parser shows Protocol's and ExtractOptions' defaults, read from the classes."""
    from workbench.cli.parser import _extract_defaults, _protocol_defaults
    from workbench.evaluation.settings import Protocol
    from workbench.features.options import ExtractOptions

    assert _protocol_defaults() == {f.name: f.default for f in dataclasses.fields(Protocol)}
    assert _extract_defaults() == {f.name: f.default for f in dataclasses.fields(ExtractOptions)}


@pytest.mark.parametrize("name", workbench.__all__)
def test_public_name_imports(name):
    value = getattr(workbench, name)
    assert value is not None
    if name != "__version__":
        module = sys.modules[workbench._EXPORTS[name]]
        assert getattr(module, name) is value


def test_public_api_covers_the_flow():
    for name in ("extract", "sweep", "fine_tune", "CNNClassifier", "run_experiment", "write_report", "Protocol",
                 "ExtractOptions", "SweepOptions", "Execution", "FineTuneConfig", "Manifest", "FeatureCache",
                 "FeatureSet", "ResultStore", "summarize", "WorkbenchError", "get_backbone", "list_backbones",
                 "register_backbone", "get_head", "list_heads", "register_head", "get_baseline",
                 "list_baselines", "register_baseline"):
        assert name in workbench.__all__, name
    # `workbench.search` is the sub-package; its search() is the selection step.
    from workbench.search.select import search

    assert workbench.search.search is search
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        workbench.nothing  # noqa: B018
