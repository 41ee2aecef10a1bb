"""The ``rillet`` command line (``python -m rillet``, or ``rillet`` once installed):
``rillet list CHECKPOINT_DIR``, ``rillet stop CHECKPOINT_DIR JOB``,
``rillet resume CHECKPOINT_DIR JOB``, ``rillet sql ...``. ``rillet --help`` says more."""

from __future__ import annotations

import json
import logging
import os
import sys

from rillet._rillet import cli_main


class _JsonLines(logging.Formatter):
    """One JSON object per record: time, level, logger, message and the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"timestamp": self.formatTime(record), "level": record.levelname,
                "target": record.name, "message": record.getMessage()}
        line.update(getattr(record, "rillet", {}))
        return json.dumps(line)


def _log_to_stderr(args: list[str]) -> None:
    """Show the engine's events (the ``rillet`` logger) on stderr as the native command
    does: text, or JSON lines with ``--log-format json`` (or ``RILLET_LOG_FORMAT=json``);
    unless the program configured logging itself."""
    logger = logging.getLogger("rillet")
    if logger.handlers or logging.getLogger().handlers:
        return
    form = os.environ.get("RILLET_LOG_FORMAT", "human")
    for i, arg in enumerate(args):
        if arg == "--log-format" and i + 1 < len(args):
            form = args[i + 1]
        elif arg.startswith("--log-format="):
            form = arg.split("=", 1)[1]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonLines() if form == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    # RILLET_LOG / RUST_LOG decide which events the engine sends; show every one it sends.
    logger.setLevel(logging.DEBUG)


def main(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: this process's arguments) and return
    its exit status."""
    args = sys.argv[1:] if argv is None else list(argv)
    _log_to_stderr(args)
    return cli_main(["rillet", *args])


if __name__ == "__main__":
    sys.exit(main())
