"""Logging set-up for the services and the command line."""

from __future__ import annotations

import logging


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # The camera simulator logs each verdict itself; httpx's line per request would repeat it.
    logging.getLogger("httpx").setLevel(logging.WARNING)
