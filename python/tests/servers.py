"""Where the tests find the servers they start on loopback, and whether a missing one
skips a test or fails it: scripts/test.sh (and so CI) sets ``RILLET_REQUIRE_SERVERS``,
after installing every server, so there a missing one is a failure, never a skip."""

from __future__ import annotations

import glob
import os
import shutil

import pytest

REQUIRE_SERVERS = bool(os.environ.get("RILLET_REQUIRE_SERVERS"))


def needs(available: bool, what: str) -> pytest.MarkDecorator:
    """Skip the test when ``available`` is false, unless servers are required (then the
    test runs and fails on its own missing server)."""
    return pytest.mark.skipif(not available and not REQUIRE_SERVERS,
                              reason=f"needs {what} (bash scripts/setup.sh installs it)")


def postgres_bin_dir() -> str | None:
    """The directory holding PostgreSQL's initdb, pg_ctl and postgres: on PATH (this image
    links them into /usr/local/bin), or Debian's /usr/lib/postgresql/<version>/bin, the
    newest version first."""
    on_path = [shutil.which(name) for name in ("initdb", "pg_ctl", "postgres")]
    if all(on_path):
        return os.path.dirname(os.path.realpath(on_path[0]))
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[-3]) if p.split("/")[-3].isdigit() else 0)
    return os.path.dirname(found[-1]) if found else None
