#!/usr/bin/env bash
# Fetches ONNX Runtime's shared library for agents that run on another
# machine (an ARM board), from the official onnxruntime wheel on PyPI — the
# version scripts/requirements.txt pins for .venv, so the host's tests and
# the boards run the same ONNX Runtime:
#
#   bash scripts/fetch-ort.sh [aarch64|x86_64]     (default aarch64)
#
# Puts it at dist/onnxruntime-<arch>/libonnxruntime.so (with a VERSION file)
# and prints that path. Idempotent: when the library of the pinned version
# is there, it downloads nothing. The wheel is cached in
# ${XDG_CACHE_HOME:-~/.cache}/edgeloop/wheels. Run at setup or build time
# (scripts/build-agent.sh aarch64-gnu runs it), never by the agent.
# Needs Python with pip: .venv's (scripts/setup.sh), else python3's.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1m[fetch-ort]\033[0m %s\n' "$*" >&2; }
die() { echo "fetch-ort: $*" >&2; exit 1; }

usage="usage: scripts/fetch-ort.sh [aarch64|x86_64]"
arch=aarch64
while (( $# )); do
  case "$1" in
    aarch64 | x86_64) arch=$1 ;;
    -h | --help) echo "$usage"; exit 0 ;;
    *) die "unknown argument '$1'; $usage" ;;
  esac
  shift
done

version=$(sed -n 's/^onnxruntime==\([0-9][0-9.]*\)$/\1/p' scripts/requirements.txt)
[[ -n $version ]] || die "scripts/requirements.txt pins no onnxruntime==VERSION"
out_dir=dist/onnxruntime-$arch
lib=$out_dir/libonnxruntime.so
stamp=$out_dir/VERSION
if [[ -f $lib && "$(cut -d' ' -f1 "$stamp" 2>/dev/null)" == "$version" ]]; then
  echo "$PWD/$lib"
  exit 0
fi

if [[ -x .venv/bin/python ]]; then
  python=.venv/bin/python
else
  python=$(command -v python3) || die "no Python: run scripts/setup.sh (it creates .venv) or install python3 with pip"
fi
"$python" -m pip --version >/dev/null 2>&1 ||
  die "$python has no pip: run scripts/setup.sh (it creates .venv), or install pip (Debian: python3-pip)"

cache=${XDG_CACHE_HOME:-$HOME/.cache}/edgeloop/wheels
mkdir -p "$cache"
shopt -s nullglob
wheels=("$cache/onnxruntime-$version-"*"_$arch.whl")
if (( ! ${#wheels[@]} )); then
  log "downloading the onnxruntime $version wheel for $arch Linux from PyPI into $cache"
  # Any manylinux tag up to glibc 2.28 (what onnxruntime's aarch64 wheels
  # need); the library in it is the same for every Python version.
  "$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --platform "manylinux_2_28_$arch" --platform "manylinux_2_27_$arch" --platform "manylinux2014_$arch" \
    --python-version 3.12 --implementation cp --dest "$cache" "onnxruntime==$version" ||
    die "pip could not download onnxruntime==$version for manylinux $arch (is PyPI reachable?)"
  wheels=("$cache/onnxruntime-$version-"*"_$arch.whl")
  (( ${#wheels[@]} )) || die "pip downloaded no onnxruntime $version wheel for $arch into $cache"
fi
wheel=${wheels[0]}

mkdir -p "$out_dir"
# A wheel is a zip; the library is onnxruntime/capi/libonnxruntime.so.<version>.
# Extracted to a temp file, checked to be an ELF for $arch, then renamed into
# place, so an interrupted run never leaves a half library behind.
tmp=$(mktemp "$out_dir/.libonnxruntime.XXXXXX")
trap 'rm -f "$tmp"' EXIT
"$python" - "$wheel" "$tmp" "$arch" <<'PY' || die "cannot take libonnxruntime.so out of $wheel (delete it to download it again)"
import re, shutil, sys, zipfile
wheel, dest, arch = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if re.fullmatch(r"onnxruntime/capi/libonnxruntime\.so(\.[0-9.]+)?", n)]
    if not names:
        sys.exit(f"{wheel} has no onnxruntime/capi/libonnxruntime.so*")
    with z.open(max(names, key=len)) as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out)
with open(dest, "rb") as f:
    head = f.read(20)
machine = {"aarch64": 183, "x86_64": 62}[arch]
if head[:4] != b"\x7fELF" or int.from_bytes(head[18:20], "little") != machine:
    sys.exit(f"the library in {wheel} is not an ELF file for {arch}")
PY
chmod 644 "$tmp"
mv -f "$tmp" "$lib"
trap - EXIT
printf '%s %s\n' "$version" "$(basename "$wheel")" >"$stamp"
log "$lib: ONNX Runtime $version for $arch ($(stat -c %s "$lib") bytes, from $(basename "$wheel"))"
echo "$PWD/$lib"
