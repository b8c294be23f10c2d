#!/usr/bin/env bash
# Idempotent setup of everything edgeloop needs to build and test on a fresh
# Debian machine. Safe to run again: each step checks before it installs.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

if ! command -v cargo >/dev/null 2>&1; then
  if [[ -x "$HOME/.cargo/bin/cargo" ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "setup: cargo not found. Install Rust (rustup) first: the project needs Rust 1.95 or newer." >&2
    exit 1
  fi
fi

need_version=1.95
have_version=$(rustc --version | awk '{print $2}')
if [[ "$(printf '%s\n%s\n' "$need_version" "$have_version" | sort -V | head -n1)" != "$need_version" ]]; then
  echo "setup: rustc $have_version is older than $need_version" >&2
  exit 1
fi
log "rustc $have_version"
# The test command checks formatting and lints.
for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    log "adding the $component component"
    rustup component add "$component"
  fi
done

# A venv the project owns: the ONNX checker and ONNX Runtime (tests) and
# PyTorch, whose libtorch tch links (.cargo/config.toml points LIBTORCH at
# .venv/libtorch).
if [[ ! -x .venv/bin/python ]]; then
  log "creating .venv"
  python3 -m venv .venv
fi
if ! cmp -s scripts/requirements.txt .venv/.requirements 2>/dev/null; then
  # PyTorch's CUDA wheels take ~5 GB installed plus the downloads: say so
  # up front rather than letting pip die halfway with ENOSPC.
  need_kb=$((8 * 1024 * 1024))
  free_kb=$(df -Pk . | awk 'NR==2 {print $4}')
  if (( free_kb < need_kb )); then
    echo "setup: installing PyTorch into .venv needs about 8 GB free on $(df -P . | awk 'NR==2 {print $6}'); only $((free_kb / 1024)) MB are." >&2
    exit 1
  fi
  log "installing Python packages (scripts/requirements.txt)"
  # uv (from PyPI) downloads and unpacks the wheels in parallel: 16 s here
  # where pip took 54. Its cache sits on the venv's disk and the packages
  # are hard links into it, so the wheels exist once on disk (not in a tmpfs
  # /tmp, not twice); the cache is dropped afterwards. uv does not read
  # pip's configuration (a mirror in pip.conf, say): where it fails, pip
  # installs them, downloading into a temp dir on the same disk, uncached.
  if ! { .venv/bin/python -m pip install -q --no-cache-dir --disable-pip-version-check uv &&
    UV_CACHE_DIR="$PWD/.venv/uv-cache" UV_LINK_MODE=hardlink \
      .venv/bin/uv pip install -q --python .venv/bin/python -r scripts/requirements.txt; }; then
    log "uv could not install them (above); installing with pip (about a minute here)"
    mkdir -p .venv/tmp
    TMPDIR="$PWD/.venv/tmp" .venv/bin/python -m pip install -q --no-cache-dir \
      --disable-pip-version-check -r scripts/requirements.txt
  fi
  rm -rf .venv/uv-cache .venv/tmp
  cp scripts/requirements.txt .venv/.requirements
fi
torch_dir=$(.venv/bin/python -c 'import os, torch; print(os.path.dirname(torch.__file__))')
if [[ "$(readlink .venv/libtorch 2>/dev/null)" != "$torch_dir" ]]; then
  ln -sfn "$torch_dir" .venv/libtorch
fi
log "libtorch $(.venv/bin/python -c 'import torch; print(torch.__version__)') at .venv/libtorch"

# The device farm's broker (Debian's nats-server; its tests start one).
if ! command -v nats-server >/dev/null 2>&1 && [[ ! -x /usr/sbin/nats-server ]]; then
  if command -v apt-get >/dev/null 2>&1; then
    log "installing nats-server (Debian) for the device farm"
    sudo=()
    (( EUID == 0 )) || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends nats-server >/dev/null
  else
    log "nats-server is not installed and there is no apt-get: the farm's tests will be skipped"
  fi
fi

log "fetching crates (Cargo.lock is the source of truth)"
cargo fetch --locked >/dev/null
log "done"
