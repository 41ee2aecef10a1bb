#!/usr/bin/env bash
# The system packages that the build, the main job and the tests need, each checked by
# what is really used (a library's development file, a `.pc` file, a server binary), and
# installed with apt-get when this runs as root. Otherwise it prints the one `sudo apt-get
# install` line to run and exits 1, before anything is compiled. env.sh runs it, so
# `scripts/demo.sh` and `scripts/test.sh` (and CI, through test.sh) need no other step.
#
#   bash scripts/setup.sh            # install what is missing (root), or say what to run
#   bash scripts/setup.sh --check    # print the missing packages, one a line; install nothing
#
#   RILLET_SYSROOT     look for libraries, .pc files and PostgreSQL's server directory
#                      under this prefix instead of / (commands are looked up on PATH);
#                      python/tests/test_setup.py runs the detection on made-up layouts
#   RILLET_SKIP_SETUP  set to 1 to skip this check (a machine set up some other way, say
#                      FFmpeg or LLVM in a prefix of your own, found through PKG_CONFIG_PATH
#                      and LIBCLANG_PATH)
set -euo pipefail

[ "${RILLET_SKIP_SETUP:-}" = "1" ] && exit 0
SYSROOT="${RILLET_SYSROOT:-}"
MISSING=()

need() { # need PACKAGE... : add packages to the list to install, once each
  local p
  for p in "$@"; do
    [[ " ${MISSING[*]-} " == *" $p "* ]] || MISSING+=("$p")
  done
}

has_command() { command -v "$1" >/dev/null 2>&1; }

has_file() { # has_file GLOB... : true when any of the globs (under the sysroot) names a file
  local pattern path
  for pattern in "$@"; do
    for path in "$SYSROOT"$pattern; do
      [ -e "$path" ] && return 0
    done
  done
  return 1
}

# A C compiler and linker for the crates that build C code.
has_command cc || need build-essential
has_command python3 || need python3
python3 -c "import venv, ensurepip" 2>/dev/null || need python3-venv

# The video operators: ffmpeg-sys-next finds FFmpeg's libraries through pkg-config and
# generates its bindings with bindgen, which loads the libclang development library
# (`libclang.so` itself: libclang-cpp.so.N or libclang.so.1 alone are not enough, and the
# clang headers it needs come with libclang-dev).
has_command pkg-config || need pkg-config
for lib in libavcodec libavformat libavutil libswscale; do
  has_file "/usr/lib/*/pkgconfig/$lib.pc" "/usr/lib/pkgconfig/$lib.pc" \
    "/usr/local/lib/pkgconfig/$lib.pc" \
    || { [ -z "$SYSROOT" ] && has_command pkg-config && pkg-config --exists "$lib"; } \
    || need "$lib-dev"
done
if [ -n "${LIBCLANG_PATH:-}" ] && [ -e "$LIBCLANG_PATH/libclang.so" ]; then
  :
else
  has_file "/usr/lib/llvm-*/lib/libclang.so" "/usr/lib/*/libclang.so" || need clang libclang-dev
fi

# libjpeg-turbo, which turbojpeg-sys builds from its bundled source: cmake drives the
# build, nasm assembles the SIMD code that makes it fast (the build fails without it).
has_command cmake || need cmake
has_command nasm || need nasm

# Sample media for the main job and the tests: videos made by ffmpeg, speech by espeak-ng;
# `file` checks MIME types in the tests; maturin sets the extension's rpath with patchelf.
has_command ffmpeg || need ffmpeg
has_command espeak-ng || need espeak-ng
has_command file || need file
has_command patchelf || need patchelf

# Servers the tests start on loopback: Redis (streams), PostgreSQL (the upsert sink;
# initdb, pg_ctl and postgres wherever Debian or this image puts them) and its psql client.
has_command redis-server || need redis-server
if ! { has_command initdb && has_command pg_ctl && has_command postgres; } \
    && ! has_file "/usr/lib/postgresql/*/bin/initdb"; then
  need postgresql
fi
has_command psql || need postgresql-client

if [ "${1:-}" = "--check" ]; then
  [ ${#MISSING[@]} -eq 0 ] || printf '%s\n' "${MISSING[@]}"
  exit 0
fi
[ ${#MISSING[@]} -eq 0 ] && exit 0
if ! has_command apt-get; then
  echo "Rillet needs these Debian packages (or their equivalents) first: ${MISSING[*]}" >&2
  echo "(or set RILLET_SKIP_SETUP=1 if the machine has what they provide another way)" >&2
  exit 1
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "Rillet needs these system packages first; install them and run this again:" >&2
  echo "  sudo apt-get update && sudo apt-get install -y ${MISSING[*]}" >&2
  exit 1
fi
echo "== installing system packages: ${MISSING[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q "${MISSING[@]}"
