# shellcheck shell=bash
# Shared by scripts/build-agent.sh and scripts/size-agent.sh: sourced, not
# run. The one place that knows which C toolchain builds for each cross
# target (the static musl ones and glibc aarch64): tract compiles assembly
# kernels, so cargo needs a C compiler besides the linker.

# rustup's cargo when it is installed but not on PATH yet (fresh machines).
if ! command -v cargo >/dev/null 2>&1 && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi

# cross_cargo_env TRIPLE: sets `cross_env` to the environment (NAME=VALUE
# words) that points cargo's C compiler and linker for TRIPLE at Debian's
# toolchain; run cargo as `env "${cross_env[@]}" cargo …`.
cross_cargo_env() {
  local cc env_triple=${1//-/_}
  case "$1" in
    # The host's gcc assembles the kernels; Rust bundles musl.
    x86_64-unknown-linux-musl) cc=gcc ;;
    # musl: the kernels call no libc, and Rust bundles musl; gnu: links
    # against Debian's arm64 cross glibc (libc6-dev-arm64-cross).
    aarch64-unknown-linux-musl | aarch64-unknown-linux-gnu) cc=aarch64-linux-gnu-gcc ;;
    *) echo "no cross toolchain known for '$1'" >&2; return 1 ;;
  esac
  # shellcheck disable=SC2034 # used by the scripts that source this
  cross_env=("CC_$env_triple=$cc" "CARGO_TARGET_${env_triple^^}_LINKER=$cc")
}
