"""Locust entry point for ringserve.

Pick the users for the server's protocol, by class name or by tag::

    locust -f loadtest/locustfile.py HttpAppUser            # --protocol http
    locust -f loadtest/locustfile.py EchoUser               # --protocol echo
    locust -f loadtest/locustfile.py --tags echo            # the same, by tag

The target defaults to $LOADTEST_HOST (else http://127.0.0.1:8080); Locust's
``--host`` wins.  The echo user accepts ``tcp://h:p``, ``h:p`` or any URL.
Everything works in the web UI, headless, ``--processes`` and
``--master``/``--worker``.

``--warmup-seconds W`` (used by ``python -m loadtest.compare``) resets the
statistics W seconds after all users are spawned, so the warm-up is
discarded, and prints the window markers of `loadtest` on stderr.  Without
it nothing is reset or printed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import gevent
from locust import events
from locust.env import Environment
from locust.runners import WorkerRunner

# Locust puts this file's directory on sys.path, not the project root; add it
# so `loadtest` is this package from any working directory.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import loadtest  # noqa: E402
from loadtest.users import EchoUser, HttpAppUser, TcpEchoUser  # noqa: E402

__all__ = ["EchoUser", "HttpAppUser", "TcpEchoUser"]


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    parser.add_argument(
        "--warmup-seconds",
        type=float,
        default=None,
        include_in_web_ui=False,
        help="reset the statistics this many seconds after spawning completes (ringserve)",
    )


@events.init.add_listener
def _drop_users_without_tasks(environment: Environment, **_: Any) -> None:
    """Let ``--tags echo`` / ``--tags http`` pick the users, not only their tasks.

    Locust filters tasks by tag when a test starts but keeps a user whose
    every task is filtered out, and that user then fails with "No tasks
    defined".  Drop such users at init, before a master builds its
    dispatcher, using Locust's rule: a task runs if it has one of the tags
    (when tags are given) and none of the excluded ones.
    """
    options = environment.parsed_options
    tags = set(getattr(options, "tags", None) or ())
    excluded = set(getattr(options, "exclude_tags", None) or ())
    if not (tags or excluded):
        return

    def runs(task: Any) -> bool:
        if isinstance(task, type):  # a TaskSet: let Locust decide
            return True
        task_tags: set[str] = getattr(task, "locust_tag_set", set())
        return (not tags or bool(task_tags & tags)) and not task_tags & excluded

    kept = [cls for cls in environment.user_classes if any(runs(t) for t in cls.tasks)]
    if kept:
        environment.user_classes[:] = kept


def _warmup_seconds(environment: Environment) -> float | None:
    options = environment.parsed_options
    return getattr(options, "warmup_seconds", None) if options is not None else None


@events.init.add_listener
def _discard_warmup(environment: Environment, **_: Any) -> None:
    """With --warmup-seconds: reset the stats once per test, after the warm-up.

    Only the local runner or the master resets: workers send increments, so
    the master's totals are what the report shows (a worker's next report
    may still carry up to its report interval of warm-up).
    """
    warmup = _warmup_seconds(environment)
    if warmup is None or isinstance(environment.runner, WorkerRunner):
        return
    state: dict[str, Any] = {"armed": False, "timer": None}

    def open_window() -> None:
        if environment.runner is not None:
            environment.runner.stats.reset_all()
        print(loadtest.WINDOW_START_MARKER, file=sys.stderr, flush=True)

    def on_test_start(**_: Any) -> None:
        state["armed"] = True

    def on_spawning_complete(**_: Any) -> None:
        if state["armed"]:  # not again when the user count changes mid-test
            state["armed"] = False
            state["timer"] = gevent.spawn_later(warmup, open_window)

    def on_test_stopping(**_: Any) -> None:
        state["armed"] = False
        if state["timer"] is not None:
            state["timer"].kill(block=False)
            state["timer"] = None
        print(loadtest.WINDOW_END_MARKER, file=sys.stderr, flush=True)

    environment.events.test_start.add_listener(on_test_start)
    environment.events.spawning_complete.add_listener(on_spawning_complete)
    environment.events.test_stopping.add_listener(on_test_stopping)
