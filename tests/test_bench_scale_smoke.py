"""benchmarks/gpu/bench_scale.py --smoke: every section runs on the CPU at tiny scale and
the table has its rows with positive numbers (the GPU run is prepared by this)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu" / "bench_scale.py"


def _row(text: str, first: str) -> list[str]:
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == first:
            return cells
    raise AssertionError(f"no table row starting {first!r} in:\n{text}")


def _positive(cell: str) -> float:
    assert re.fullmatch(r"\d+(\.\d+)?", cell), cell
    v = float(cell)
    assert v > 0, cell
    return v


@pytest.mark.slow
def test_smoke_run_writes_every_table(tmp_path, busi_dir):
    out = tmp_path / "scale.md"
    r = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out), "--work", str(tmp_path / "w"),
                        "--busi", str(busi_dir)], capture_output=True, text=True, timeout=900,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    text = out.read_text()
    assert "## Errors" not in text, text
    assert "Image set: 16 PNG files" in text
    _positive(_row(text, "PNG decode (`decode_image`, pool start included)")[4])
    for run in ("cold", "warm"):
        cells = _row(text, run)
        assert cells[1] == "16" and cells[2] == "32"  # two backbones, every image forwarded by each
        for c in cells[3:7]:
            _positive(c)
    for feat, gmac in (("resnet18@random:avgpool", 1.82), ("alexnet@random:fc7", None)):
        cells = _row(text, feat)
        assert cells[1] == "64"
        for c in cells[2:7]:
            _positive(c)
        if gmac:  # ResNet-18: 1.82 GMAC at 224 px, so (64/224)^2 of it at 64 px
            assert float(cells[2]) == pytest.approx(gmac * (64 / 224) ** 2, rel=0.05)
    for net in ("resnet18", "tf_efficientnet_lite0"):
        for source in ("PNG", "pixel store"):
            cells = [c for c in (line.strip().strip("|").split("|") for line in text.splitlines())
                     if len(c) > 2 and c[0].strip() == net and c[1].strip() == source]
            assert cells, (net, source)
            for c in cells[0][2:5]:
                _positive(c.strip())
    assert "host RSS, this process" in text


def test_unknown_section_is_refused():
    r = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--sections", "six,nope"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "nope" in r.stderr
