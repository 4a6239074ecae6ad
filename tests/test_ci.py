"""The CI hook (`tests.support.ci`): with no ring and ``CI=true``, uring skips fail the run.

A tiny test file runs in a child pytest where `uring_backend.Ring` refuses,
as a seccomp filter would (EPERM), so the probe finds no ring.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Make every Ring refuse before the plugin's probe runs, then run pytest.
BOOT = f"""
import sys, pytest
try:
    import uring_backend
    def refuse(*args, **kwargs):
        raise uring_backend.UringUnavailable({errno.EPERM})
    uring_backend.Ring = refuse
except ImportError:
    pass  # not built: the probe finds no ring either
sys.exit(pytest.main(sys.argv[1:]))
"""
PARAMETRIZED = """
import pytest
from tests.support import BACKENDS

@pytest.mark.parametrize("backend", BACKENDS)
def test_backend(backend):
    pass

@pytest.mark.skip(reason="an ordinary skip")
def test_skipped_for_another_reason():
    pass
"""
MODULE = """
from tests.uring_backend.support import require_ring

require_ring()

def test_ring():
    pass
"""


def run(tmp_path: Path, source: str, ci: bool) -> tuple[int, str]:
    """Run `source` as a test file in a child pytest with the hook; its status and output."""
    (tmp_path / "test_tiny.py").write_text(source)
    env = {k: v for k, v in os.environ.items() if k != "CI"} | ({"CI": "true"} if ci else {})
    argv = [sys.executable, "-c", BOOT, "-p", "tests.support.ci", "-p", "no:cacheprovider"]
    argv += ["-q", "-rfEs", "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path)]
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout + done.stderr


NO_RING = "CI=true, so a uring test must not skip, but no ring: no io_uring here"


def test_a_uring_parameter_skipped_for_no_ring_fails_under_ci(tmp_path: Path) -> None:
    status, out = run(tmp_path, PARAMETRIZED, ci=True)
    assert status == pytest.ExitCode.TESTS_FAILED, out
    # A skipif skips at setup, so the failure shows as an error there.
    assert out.rstrip().splitlines()[-1].startswith("1 passed, 1 skipped, 1 error"), out
    assert NO_RING in out and "(EPERM)" in out, out
    assert "an ordinary skip" in out  # other skips stay skips


def test_a_module_skipped_for_no_ring_errors_out_under_ci(tmp_path: Path) -> None:
    status, out = run(tmp_path, MODULE, ci=True)
    assert status == pytest.ExitCode.INTERRUPTED, out  # a collection error stops the run
    assert "ERROR collecting test_tiny.py" in out and NO_RING in out, out


@pytest.mark.parametrize("source", [PARAMETRIZED, MODULE], ids=["parameter", "module"])
def test_without_ci_no_ring_is_a_skip(tmp_path: Path, source: str) -> None:
    status, out = run(tmp_path, source, ci=False)
    assert status in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED), out
    summary = out.rstrip().splitlines()[-1]
    assert summary.startswith("1 passed, 2 skipped" if source is PARAMETRIZED else "1 skipped"), out
