# shellcheck shell=bash
# Shared by scripts/build-agent.sh and scripts/size-agent.sh: sourced, not
# run. The one place that knows which C toolchain builds for each static
# (musl) target: tract compiles assembly kernels, so cargo needs a C
# compiler besides the linker.

# rustup's cargo when it is installed but not on PATH yet (fresh machines).
if ! command -v cargo >/dev/null 2>&1 && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi

# musl_cargo_env ARCH: sets `musl_env` to the environment (NAME=VALUE words)
# that points cargo's C compiler and linker for ARCH-unknown-linux-musl at
# Debian's toolchain; run cargo as `env "${musl_env[@]}" cargo …`.
musl_cargo_env() {
  local cc env_triple=${1}_unknown_linux_musl
  case "$1" in
    x86_64) cc=gcc ;; # the host's gcc assembles the kernels; Rust bundles musl
    aarch64) cc=aarch64-linux-gnu-gcc ;;
    *) echo "no musl toolchain known for '$1'" >&2; return 1 ;;
  esac
  # shellcheck disable=SC2034 # used by the scripts that source this
  musl_env=("CC_$env_triple=$cc" "CARGO_TARGET_${env_triple^^}_LINKER=$cc")
}
