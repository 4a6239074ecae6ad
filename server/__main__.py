"""`python -m server`: parse argv, build the Config, run the Server."""

from __future__ import annotations

import logging
import sys

from server.config import parse_config


def main(argv: list[str] | None = None) -> int:
    config = parse_config(argv)
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if config.workers > 1 or config.max_requests:  # recycling needs a parent to replace it
        from server.workers import run_workers

        return run_workers(config)
    from server.lifecycle import Server

    return Server(config).run()


if __name__ == "__main__":
    sys.exit(main())
