# shellcheck shell=bash
# Shared by scripts/deploy-android.sh and scripts/deploy-ssh.sh: sourced, not
# run. Kept to bash 3.2 and POSIX tools, since macOS workstations deploy too.
# The sourcing script sets PROG before sourcing.

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# EDGELOOP_DIST_DIR lets tests (and unusual layouts) supply the prebuilt agents.
# shellcheck disable=SC2034 # used by the scripts that source this
DIST_DIR=${EDGELOOP_DIST_DIR:-$REPO_ROOT/dist}
TOKEN_DIR=${XDG_CONFIG_HOME:-$HOME/.config}/edgeloop/tokens

log() { printf '[%s] %s\n' "$PROG" "$*" >&2; }
warn() { printf '%s: warning: %s\n' "$PROG" "$*" >&2; }
die() {
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  exit 1
}
usage_error() {
  printf '%s: %s\n(see %s --help)\n' "$PROG" "$*" "$PROG" >&2
  exit 2
}

need_cmd() {
  command -v "$1" >/dev/null 2>&1 || die "'$1' is not on PATH ($2)"
}

check_port() { # NAME VALUE
  if ! [[ $2 =~ ^[0-9]+$ ]] || ((10#$2 < 1 || 10#$2 > 65535)); then
    usage_error "$1 must be a port number (1-65535), got '$2'"
  fi
}

# Extra `serve` arguments travel inside adb/ssh command lines and a systemd
# unit, each with its own quoting rules: allow only characters none of them
# treats specially, rather than quote three ways.
check_agent_args() {
  local a
  for a in "$@"; do
    [[ $a =~ ^[A-Za-z0-9_./:=@,+-]+$ ]] ||
      usage_error "agent argument '$a' after -- has characters other than letters, digits and ._/:=@,+-"
  done
}

# A name usable as a file name: adb serials of network devices look like
# 192.168.1.7:5555, ssh targets like user@host.
file_safe() { printf '%s' "$1" | tr -c 'A-Za-z0-9._@-' '_'; }

# The token file to use: the given one (which must exist and hold a token),
# else a per-device one under TOKEN_DIR, created on first use (mode 600) and
# reused afterwards so a restart keeps the URL + token pair users have saved.
resolve_token_file() { # GIVEN DEVICE_NAME
  local given=$1 name=$2 file
  if [[ -n $given ]]; then
    [[ -f $given ]] || die "token file '$given' does not exist (omit --token-file to have one created)"
    file=$given
  else
    file=$TOKEN_DIR/$(file_safe "$name").token
    if [[ ! -f $file ]]; then
      (umask 077 && mkdir -p "$TOKEN_DIR" && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$file") ||
        die "cannot create token file $file"
      log "created token file $file"
    fi
  fi
  [[ -n $(tr -d ' \t\r\n' <"$file") ]] || die "token file '$file' is empty"
  # Group/other bits set: anyone on this machine could read the token.
  # shellcheck disable=SC2012 # ls -l is the portable way to read the mode (GNU and BSD stat differ)
  case $(ls -ld "$file" | cut -c5-10) in
    ------) ;;
    *) warn "token file $file is readable by others; chmod 600 it" ;;
  esac
  # Absolute, so the printed hint works from any directory.
  printf '%s/%s\n' "$(cd "$(dirname "$file")" && pwd)" "$(basename "$file")"
}

# Waits up to WAIT seconds for GET /v1/health (no token needed), then checks
# the token on /v1/info: a healthy answer alone could come from an older agent
# with another token still holding the port. Returns non-zero with the reason
# logged.
wait_healthy() { # URL TOKEN_FILE WAIT
  local url=$1 token_file=$2 wait=$3 tmp status=0
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/edgeloop-deploy.XXXXXX")
  local deadline=$((SECONDS + wait))
  until curl -fsS --max-time 2 -o /dev/null "$url/v1/health" 2>"$tmp/err"; do
    if ((SECONDS >= deadline)); then
      log "no answer from $url/v1/health within ${wait}s: $(cat "$tmp/err")"
      rm -rf "$tmp"
      return 1
    fi
    sleep 0.5
  done
  # The header goes through a file (curl -H @file) so the token never shows
  # up in process listings.
  (umask 077 && printf 'Authorization: Bearer %s\n' "$(tr -d ' \t\r\n' <"$token_file")" >"$tmp/auth")
  if ! curl -fsS --max-time 5 -H @"$tmp/auth" -o /dev/null "$url/v1/info" 2>"$tmp/err"; then
    log "$url answers /v1/health but not /v1/info with the token in $token_file: $(cat "$tmp/err")"
    log "(an agent started with another token may still hold the port: stop it, then start again)"
    status=1
  fi
  rm -rf "$tmp"
  return "$status"
}

print_success() { # WHERE URL TOKEN_FILE STOP_HINT
  printf 'edgeloop-agent is running on %s and answers at %s\n' "$1" "$2"
  printf '  URL:        %s\n' "$2"
  printf '  token file: %s\n' "$3"
  printf '  try:        edgeloop devices --device %s --token-file %s\n' "$2" "$3"
  printf '  stop:       %s\n' "$4"
}
