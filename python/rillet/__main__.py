"""The ``rillet`` command line (``python -m rillet``, or ``rillet`` once installed):
``rillet list CHECKPOINT_DIR``, ``rillet stop CHECKPOINT_DIR JOB``,
``rillet resume CHECKPOINT_DIR JOB``, ``rillet sql ...``. ``rillet --help`` says more."""

from __future__ import annotations

import sys

from rillet._rillet import cli_main


def main(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: this process's arguments) and return
    its exit status."""
    args = sys.argv[1:] if argv is None else list(argv)
    return cli_main(["rillet", *args])


if __name__ == "__main__":
    sys.exit(main())
