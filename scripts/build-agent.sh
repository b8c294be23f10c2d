#!/usr/bin/env bash
# Builds edgeloop-agent binaries for devices (stripped, in the default
# profile):
#
#   bash scripts/build-agent.sh [x86_64|aarch64|aarch64-gnu|all] [--profile PROFILE]
#
# x86_64 and aarch64 are static (musl): they need no libc on the device, so
# one file runs on any Linux kernel of its architecture (Android's
# included). They hold tract only: the default `ort` feature loads ONNX
# Runtime with dlopen, which a static musl binary cannot do.
# aarch64-gnu is the glibc aarch64 agent with the `ort` feature, for ARM
# Linux boards that should measure ONNX Runtime too; it comes with
# dist/onnxruntime-aarch64/libonnxruntime.so (scripts/fetch-ort.sh).
# `all` (the default) is x86_64 and aarch64.
#
# Installs what it needs first (Rust targets, Debian packages), skipping
# what is there. The `dist` profile (default) goes to
# dist/edgeloop-agent-<arch>-linux-<musl|gnu>, any other to dist/<profile>/,
# so test builds never replace a shipped binary.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1m[build-agent]\033[0m %s\n' "$*" >&2; }
die() { echo "build-agent: $*" >&2; exit 1; }

usage="usage: scripts/build-agent.sh [x86_64|aarch64|aarch64-gnu|all] [--profile PROFILE]

  x86_64, aarch64  static musl agent, tract only: dist/edgeloop-agent-<arch>-linux-musl
  aarch64-gnu      glibc aarch64 agent with ONNX Runtime: dist/edgeloop-agent-aarch64-linux-gnu,
                   and its library, dist/onnxruntime-aarch64/libonnxruntime.so
  all              x86_64 and aarch64 (the default)
  --profile P      cargo profile (default dist: fat LTO, stripped); other profiles go to dist/P/"
choice=all
profile=dist
while (( $# )); do
  case "$1" in
    x86_64 | aarch64 | aarch64-gnu | all) choice=$1 ;;
    --profile) profile=${2:?"--profile needs a value; $usage"}; shift ;;
    --profile=*) profile=${1#--profile=} ;;
    -h | --help) echo "$usage"; exit 0 ;;
    *) die "unknown argument '$1' (see scripts/build-agent.sh --help)" ;;
  esac
  shift
done
# The Rust target triple of each build.
case "$choice" in
  all) triples=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl) ;;
  aarch64-gnu) triples=(aarch64-unknown-linux-gnu) ;;
  *) triples=("$choice-unknown-linux-musl") ;;
esac

# shellcheck source=scripts/cross-toolchain.sh
source scripts/cross-toolchain.sh
command -v rustup >/dev/null 2>&1 || die "rustup not found: the cross targets are installed with it"

# Debian packages, per target: tract compiles assembly kernels (and C ones
# for SVE), so each target needs a C compiler besides Rust's linker. On
# x86_64 the host's gcc assembles them (they call no libc) and links against
# Rust's bundled musl. aarch64 needs the cross gcc plus the libc headers that
# its arm_sve.h includes (without them tract quietly leaves out its SVE
# kernels; the glibc build links against that libc too), and qemu to run the
# result. ONNX Runtime's library needs libstdc++ (for qemu's
# -L /usr/aarch64-linux-gnu).
packages=()
for triple in "${triples[@]}"; do
  case "$triple" in
    x86_64-unknown-linux-musl) packages+=(gcc file) ;;
    aarch64-unknown-linux-musl) packages+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static file) ;;
    aarch64-unknown-linux-gnu)
      packages+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross libstdc++6-arm64-cross qemu-user-static file) ;;
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
  for triple in "${triples[@]}"; do
    cargo clean -q -p tract-linalg --target "$triple" --profile "$profile"
  done
fi

installed_targets=$(rustup target list --installed)
for triple in "${triples[@]}"; do
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

# ONNX Runtime's library goes with the glibc agent: fetched first, so that a
# download problem shows before the long build does.
ort_lib=""
if [[ $choice == aarch64-gnu ]]; then
  ort_lib=$(bash scripts/fetch-ort.sh aarch64)
fi

for triple in "${triples[@]}"; do
  cross_cargo_env "$triple"
  features=()
  [[ $triple == *-musl ]] && features=(--no-default-features)
  log "building $triple (profile $profile)"
  start=$SECONDS
  env "${cross_env[@]}" cargo build --locked -p edgeloop-agent ${features[@]+"${features[@]}"} --target "$triple" --profile "$profile"
  # Cargo names the output folder after the profile, except dev → debug.
  profile_dir=$profile
  [[ "$profile" == dev ]] && profile_dir=debug
  out=$out_dir/edgeloop-agent-${triple/-unknown/}
  cp "${CARGO_TARGET_DIR:-target}/$triple/$profile_dir/edgeloop-agent" "$out"
  size=$(stat -c %s "$out")
  log "$out: built in $((SECONDS - start)) s"
  printf '%s\n  size:   %s bytes (%s MB)\n  file:   %s\n  sha256: %s\n' "$out" "$size" \
    "$(awk -v s="$size" 'BEGIN { printf "%.2f", s / 1e6 }')" \
    "$(file -b "$out")" "$(sha256sum "$out" | cut -d' ' -f1)"
  if [[ $triple == *-gnu ]]; then
    # The oldest glibc it runs on: the newest symbol version it links.
    glibc=$("${triple%%-*}-linux-gnu-objdump" -T "$out" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n 1)
    printf '  needs:  glibc >= %s on the device\n' "${glibc#GLIBC_}"
    printf '  ort:    %s (ONNX Runtime %s)\n' "$ort_lib" "$(cut -d' ' -f1 "$(dirname "$ort_lib")/VERSION")"
  fi
done
