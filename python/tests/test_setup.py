"""scripts/setup.sh decides what to install by what the build really uses. Run on made-up
machine layouts (RILLET_SYSROOT, and a PATH holding only python3), its ``--check`` must
ask for exactly the packages whose files are missing."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

SETUP = Path(__file__).resolve().parents[2] / "scripts" / "setup.sh"
FFMPEG = ("libavcodec", "libavformat", "libavutil", "libswscale")


def missing(root: Path, commands: tuple[str, ...] = ()) -> list[str]:
    """The packages setup.sh --check asks for on the layout under ``root``, with only
    python3 and ``commands`` (fake executables) on PATH."""
    bin_dir = root / "bin"
    bin_dir.mkdir(exist_ok=True)
    if not (bin_dir / "python3").exists():
        (bin_dir / "python3").symlink_to(sys.executable)
    for name in commands:
        (bin_dir / name).write_text("#!/bin/sh\n")
        (bin_dir / name).chmod(0o755)
    env = {"PATH": str(bin_dir), "RILLET_SYSROOT": str(root)}
    out = subprocess.run(["/bin/bash", str(SETUP), "--check"], env=env, check=True,
                         capture_output=True, text=True)
    return out.stdout.split()


def touch(root: Path, *paths: str) -> None:
    for path in paths:
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch()


def test_libclang_cpp_alone_is_not_libclang(tmp_path):
    # What this image ships: LLVM 14's runtime libraries, but not the development library
    # that bindgen loads. A glob for libclang* matches them; setup.sh must not be fooled.
    touch(tmp_path, "/usr/lib/llvm-14/lib/libclang-cpp.so.14", "/usr/lib/llvm-14/lib/libclang.so.1",
          "/usr/lib/llvm-14/lib/libLLVM-14.so")
    assert {"clang", "libclang-dev"} <= set(missing(tmp_path))


def test_the_libclang_development_library_satisfies_bindgen(tmp_path):
    touch(tmp_path, "/usr/lib/llvm-14/lib/libclang-cpp.so.14", "/usr/lib/llvm-14/lib/libclang.so")
    assert "libclang-dev" not in missing(tmp_path)


def test_each_ffmpeg_library_is_checked_by_its_pc_file(tmp_path):
    # Runtime libraries (libavcodec.so.59) without their .pc files do not build ffmpeg-sys.
    touch(tmp_path, "/usr/lib/x86_64-linux-gnu/pkgconfig/libavcodec.pc",
          "/usr/lib/x86_64-linux-gnu/libavformat.so.59", "/usr/lib/x86_64-linux-gnu/libswscale.so.6")
    wanted = set(missing(tmp_path))
    assert "libavcodec-dev" not in wanted
    assert {"libavformat-dev", "libavutil-dev", "libswscale-dev"} <= wanted


def test_a_complete_machine_needs_nothing(tmp_path):
    touch(tmp_path, "/usr/lib/llvm-14/lib/libclang.so",
          *(f"/usr/lib/x86_64-linux-gnu/pkgconfig/{lib}.pc" for lib in FFMPEG),
          "/usr/lib/postgresql/15/bin/initdb")
    commands = ("cc", "pkg-config", "cmake", "nasm", "ffmpeg", "espeak-ng", "file", "patchelf",
                "redis-server", "psql")
    assert missing(tmp_path, commands) == []


def test_servers_and_tools_are_checked_by_their_binaries(tmp_path):
    touch(tmp_path, "/usr/lib/llvm-14/lib/libclang.so",
          *(f"/usr/lib/x86_64-linux-gnu/pkgconfig/{lib}.pc" for lib in FFMPEG))
    # No PostgreSQL server binaries anywhere, though psql (the client) is there.
    wanted = missing(tmp_path, ("cc", "pkg-config", "psql"))
    assert set(wanted) == {"cmake", "nasm", "ffmpeg", "espeak-ng", "file", "patchelf", "redis-server",
                           "postgresql"}


def test_without_root_it_prints_the_install_line_and_stops_at_once(tmp_path):
    # A fake `id` says this is not root, on a layout that lacks everything.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    (bin_dir / "id").write_text("#!/bin/sh\necho 1000\n")
    (bin_dir / "id").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "RILLET_SYSROOT": str(tmp_path)}
    started = time.monotonic()
    out = subprocess.run(["/bin/bash", str(SETUP)], env=env, capture_output=True, text=True, timeout=10)
    assert time.monotonic() - started < 1.0, "it must stop before anything slow"
    assert out.returncode == 1, out
    assert "sudo apt-get update && sudo apt-get install -y" in out.stderr
    assert "libclang-dev" in out.stderr and "libavcodec-dev" in out.stderr
    assert "== installing" not in out.stdout


def test_skip_setup_checks_nothing(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "RILLET_SYSROOT": str(tmp_path), "RILLET_SKIP_SETUP": "1"}
    out = subprocess.run(["/bin/bash", str(SETUP), "--check"], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout == ""
