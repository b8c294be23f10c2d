#!/usr/bin/env bash
# Builds stripped, static (musl) edgeloop-agent binaries: they need no libc
# on the device, so one file runs on any Linux kernel of its architecture
# (Android's included):
#
#   bash scripts/build-agent.sh [x86_64|aarch64|all] [--profile PROFILE]
#
# They hold tract only: the default `ort` feature loads ONNX Runtime with
# dlopen, which a static musl binary cannot do. Installs what it needs first
# (Rust targets, Debian packages), skipping what is there. The `dist` profile
# (default) goes to dist/edgeloop-agent-<arch>-linux-musl, any other to
# dist/<profile>/, so test builds never replace a shipped binary.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1m[build-agent]\033[0m %s\n' "$*" >&2; }
die() { echo "build-agent: $*" >&2; exit 1; }

usage="usage: scripts/build-agent.sh [x86_64|aarch64|all] [--profile PROFILE]"
choice=all
profile=dist
while (( $# )); do
  case "$1" in
    x86_64 | aarch64 | all) choice=$1 ;;
    --profile) profile=${2:?"$usage"}; shift ;;
    --profile=*) profile=${1#--profile=} ;;
    -h | --help) echo "$usage"; exit 0 ;;
    *) die "unknown argument '$1'; $usage" ;;
  esac
  shift
done
case "$choice" in
  all) arches=(x86_64 aarch64) ;;
  *) arches=("$choice") ;;
esac

# shellcheck source=scripts/musl-toolchain.sh
source scripts/musl-toolchain.sh
command -v rustup >/dev/null 2>&1 || die "rustup not found: the musl targets are installed with it"

# Debian packages, per architecture: tract compiles assembly kernels (and C
# ones for SVE), so each target needs a C compiler besides Rust's linker. On
# x86_64 the host's gcc assembles them (they call no libc) and links against
# Rust's bundled musl. aarch64 needs the cross gcc plus the libc headers that
# its arm_sve.h includes (without them tract quietly leaves out its SVE
# kernels), and qemu to run the result.
packages=()
for arch in "${arches[@]}"; do
  case "$arch" in
    x86_64) packages+=(gcc file) ;;
    aarch64) packages+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static file) ;;
  esac
done
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing+=("$pkg")
done
if (( ${#missing[@]} )); then
  command -v apt-get >/dev/null 2>&1 || die "missing packages ${missing[*]} and no apt-get to install them"
  sudo=()
  if (( EUID != 0 )); then
    command -v sudo >/dev/null 2>&1 || die "missing packages ${missing[*]}: run as root or install sudo"
    sudo=(sudo)
  fi
  log "installing ${missing[*]}"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # tract-linalg's build script probes the toolchain once and caches what it
  # found; make it probe again now that the toolchain changed.
  for arch in "${arches[@]}"; do
    cargo clean -q -p tract-linalg --target "$arch-unknown-linux-musl" --profile "$profile"
  done
fi

installed_targets=$(rustup target list --installed)
for arch in "${arches[@]}"; do
  triple=$arch-unknown-linux-musl
  if ! grep -qx "$triple" <<<"$installed_targets"; then
    log "adding Rust target $triple"
    rustup target add "$triple"
  fi
done

if [[ "$profile" == dist ]]; then
  out_dir=dist
else
  out_dir=dist/$profile
fi
mkdir -p "$out_dir"

for arch in "${arches[@]}"; do
  triple=$arch-unknown-linux-musl
  musl_cargo_env "$arch"
  log "building $triple (profile $profile)"
  start=$SECONDS
  env "${musl_env[@]}" cargo build --locked -p edgeloop-agent --no-default-features --target "$triple" --profile "$profile"
  # Cargo names the output folder after the profile, except dev → debug.
  profile_dir=$profile
  [[ "$profile" == dev ]] && profile_dir=debug
  out=$out_dir/edgeloop-agent-$arch-linux-musl
  cp "${CARGO_TARGET_DIR:-target}/$triple/$profile_dir/edgeloop-agent" "$out"
  size=$(stat -c %s "$out")
  log "$out: built in $((SECONDS - start)) s"
  printf '%s\n  size:   %s bytes (%s MB)\n  file:   %s\n  sha256: %s\n' "$out" "$size" \
    "$(awk -v s="$size" 'BEGIN { printf "%.2f", s / 1e6 }')" \
    "$(file -b "$out")" "$(sha256sum "$out" | cut -d' ' -f1)"
done
