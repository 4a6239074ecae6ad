"""The machine and software a comparison ran on, recorded with every result."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
from pathlib import Path


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or "unknown"


def _run(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (done.stdout or done.stderr).strip()


def liburing_version() -> str:
    """The Debian packages' versions (runtime and headers), else pkg-config's."""
    if shutil.which("dpkg-query"):
        versions = []
        for package in ("liburing2", "liburing-dev"):
            version = _run(["dpkg-query", "-W", "-f=${Version}", package])
            if version and "no packages found" not in version:
                versions.append(f"{package} {version}")
        if versions:
            return ", ".join(versions)
    if shutil.which("pkg-config"):
        version = _run(["pkg-config", "--modversion", "liburing"])
        if version:
            return f"liburing {version}"
    return "unknown"


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def wrk_version(wrk: str | None) -> str:
    if wrk is None:
        return "not installed"
    first = _run([wrk, "-v"]).splitlines()
    return first[0].split(" Copyright")[0].strip() if first else "unknown"


def compiler_version(cc: str | None) -> str:
    """First line of ``cc --version``."""
    if cc is None:
        return "not installed"
    first = _run([cc, "--version"]).splitlines()
    return first[0].strip() if first else "unknown"


def usable_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity), sorted."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))
