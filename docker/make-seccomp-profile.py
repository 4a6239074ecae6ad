#!/usr/bin/env python3
"""Write docker/seccomp-io_uring.json: Docker's default seccomp profile plus
exactly io_uring_setup, io_uring_enter and io_uring_register.

Input: Docker's default profile as moby ships it, the file
``profiles/seccomp/default.json`` of github.com/docker/docker (it is
generated from ``profiles/seccomp/default_linux.go``, the profile dockerd
compiles in).  By default this script takes that file from the Debian package
``golang-github-docker-docker-dev`` of the ``trixie`` suite, which installs it
as /usr/share/gocode/src/github.com/docker/docker/profiles/seccomp/default.json
(docker.io 26.1.5 when this was written).  It downloads the .deb with
apt-get into a temporary directory with its own package lists, so the host's
apt configuration and installed packages are untouched.  ``--input FILE``
uses any other copy of moby's default.json instead (e.g. from a moby
checkout at the tag of the Engine you run).  Bookworm's own
golang-github-docker-docker-dev (20.10.24) is not usable: Docker before 25
still allowed io_uring, and the script refuses such a profile.

Output: the input unchanged (same key order, tab indentation) except for one
rule inserted after the main allow list::

    {"names": ["io_uring_enter", "io_uring_register", "io_uring_setup"],
     "action": "SCMP_ACT_ALLOW", "comment": "<where it came from>"}

What the defaults do with io_uring (checked on the files themselves):

- Docker: moby removed the three syscalls from the default allow list in
  Engine 25.0 ("seccomp: block io_uring_* syscalls in default profile").
  They are now simply absent, so they hit ``defaultAction SCMP_ACT_ERRNO``
  with ``defaultErrnoRet 1``: io_uring_setup fails with EPERM.  Docker
  20.10 (bookworm's docker.io) allowed them.
- podman: its default is containers/common's profile,
  /usr/share/containers/seccomp.json (Debian package
  golang-github-containers-common; 0.50.1 in bookworm, 0.62.2 in trixie).
  It does not list io_uring either, and its default action answers
  ``defaultErrnoRet 38``: io_uring_setup fails with ENOSYS, as if the
  kernel had no io_uring.  The profile written here works for podman too
  (``--security-opt seccomp=docker/seccomp-io_uring.json``): it is Docker's
  policy, EPERM for everything not allowed, plus io_uring.

Usage::

    python3 docker/make-seccomp-profile.py                 # fetch, write
    python3 docker/make-seccomp-profile.py --input default.json
    python3 docker/make-seccomp-profile.py --check         # exit 1 if stale
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

IO_URING = ["io_uring_enter", "io_uring_register", "io_uring_setup"]
PACKAGE = "golang-github-docker-docker-dev"
PACKAGE_PATH = "usr/share/gocode/src/github.com/docker/docker/profiles/seccomp/default.json"
HERE = Path(__file__).resolve().parent
DEFAULT_OUTPUT = HERE / "seccomp-io_uring.json"
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


def fetch_from_debian(suite: str, mirror: str, workdir: Path) -> tuple[Path, str]:
    """Download PACKAGE from Debian `suite` with a private apt state; extract it.

    Returns the path of default.json and a description of its origin.
    """
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise SystemExit(f"error: {tool} not found; pass --input path/to/moby/default.json")
    lists = workdir / "lists"
    archives = workdir / "cache" / "archives"
    (lists / "partial").mkdir(parents=True)
    (archives / "partial").mkdir(parents=True)
    empty = workdir / "empty.d"
    empty.mkdir()
    sources = workdir / "sources.list"
    sources.write_text(f"deb [signed-by={DEBIAN_KEYRING}] {mirror} {suite} main\n")
    options = [
        f"-oDir::Etc::SourceList={sources}",
        f"-oDir::Etc::SourceParts={empty}",
        "-oDir::Etc::Preferences=/dev/null",
        f"-oDir::Etc::PreferencesParts={empty}",
        f"-oDir::State::Lists={lists}",
        f"-oDir::Cache={workdir / 'cache'}",
        "-oDebug::NoLocking=1",
        f"-oAPT::Sandbox::User={pwd.getpwuid(os.getuid()).pw_name}",
        "-qq",
    ]
    print(f"fetching {PACKAGE} from {mirror} {suite} ...", file=sys.stderr)
    subprocess.run(["apt-get", *options, "update"], check=True)
    subprocess.run(["apt-get", *options, "download", PACKAGE], check=True, cwd=workdir)
    debs = sorted(workdir.glob(f"{PACKAGE}_*.deb"))
    if not debs:
        raise SystemExit(f"error: apt-get download left no {PACKAGE} .deb")
    version = subprocess.run(
        ["dpkg-deb", "--field", str(debs[0]), "Version"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    root = workdir / "root"
    subprocess.run(["dpkg-deb", "--extract", str(debs[0]), str(root)], check=True)
    path = root / PACKAGE_PATH
    if not path.is_file():
        raise SystemExit(f"error: {debs[0].name} has no /{PACKAGE_PATH}")
    return path, f"Debian {suite} {PACKAGE} {version}, /{PACKAGE_PATH}"


def rule_names(rule: dict[str, Any]) -> list[str]:
    names = rule.get("names") or []
    if rule.get("name"):  # the pre-2017 one-syscall-per-rule format
        names = [*names, rule["name"]]
    return list(names)


def add_io_uring(profile: dict[str, Any], origin: str, digest: str) -> dict[str, Any]:
    """`profile` plus one rule allowing the io_uring syscalls; checks the input."""
    if profile.get("defaultAction") != "SCMP_ACT_ERRNO" or not isinstance(
        profile.get("syscalls"), list
    ):
        raise SystemExit("error: not a seccomp profile in Docker's format (an allow list)")
    for rule in profile["syscalls"]:
        mentioned = sorted(set(rule_names(rule)) & set(IO_URING))
        if mentioned:
            raise SystemExit(
                f"error: the input already has a rule for {', '.join(mentioned)} "
                f"(action {rule.get('action')}); Docker before Engine 25 allowed io_uring, "
                "so this is not the current default profile"
            )
    out = copy.deepcopy(profile)
    rule = {
        "names": list(IO_URING),
        "action": "SCMP_ACT_ALLOW",
        "comment": (
            "ringserve --backend uring: the only change to Docker's default profile "
            f"({origin}, sha256 {digest}); generated by docker/make-seccomp-profile.py"
        ),
    }
    out["syscalls"].insert(1, rule)
    return out


def render(profile: dict[str, Any]) -> str:
    return json.dumps(profile, indent="\t", ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, help="moby's profiles/seccomp/default.json")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--suite", default="trixie", help="Debian suite to take the package from")
    parser.add_argument("--mirror", default="http://deb.debian.org/debian")
    parser.add_argument(
        "--check", action="store_true", help="do not write; exit 1 if --output differs"
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="seccomp-") as tmp:
        if args.input is not None:
            source, origin = args.input, f"moby profiles/seccomp/default.json from {args.input}"
        else:
            source, origin = fetch_from_debian(args.suite, args.mirror, Path(tmp))
        raw = source.read_bytes()
    profile = json.loads(raw)
    result = render(add_io_uring(profile, origin, hashlib.sha256(raw).hexdigest()))

    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != result:
            print(f"{args.output} is stale; run `make seccomp-profile`", file=sys.stderr)
            return 1
        print(f"{args.output} is up to date")
        return 0
    args.output.write_text(result)
    errno_ret = profile.get("defaultErrnoRet", "unset (EPERM)")
    print(
        f"wrote {args.output}: {len(profile['syscalls'])} rules from {origin} "
        f"(defaultErrnoRet {errno_ret}) + 1 rule allowing {', '.join(IO_URING)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
