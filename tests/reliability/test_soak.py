"""`python -m loadtest.soak` for 30 s per backend: RSS and fds back to baseline, no error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest import PROJECT_ROOT

DURATION_S = 30


@pytest.mark.timeout(DURATION_S + 150)
def test_soak_30s(backend_name: str, tmp_path: Path) -> None:
    out = tmp_path / "soak"
    argv = [sys.executable, "-m", "loadtest.soak", "--backend", backend_name]
    argv += ["--duration", str(DURATION_S), "--connections", "32", "--out", str(out)]
    proc = subprocess.run(
        argv,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=DURATION_S + 120,
        check=False,
    )
    print(f"\n{proc.stdout}{proc.stderr}")
    for name in (f"samples-{backend_name}.csv", f"samples-{backend_name}.json", "soak.png"):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    result = summary["backends"][backend_name]
    samples = json.loads((out / f"samples-{backend_name}.json").read_text())["samples"]
    assert len(samples) >= DURATION_S  # one a second
    assert result["client_ops"] > 0
    assert proc.returncode == (0 if summary["passed"] else 1)
    assert summary["passed"], result["failures"]
