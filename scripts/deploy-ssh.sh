#!/usr/bin/env bash
# Puts edgeloop-agent on a Linux board (Jetson, Raspberry Pi, x86 box) over
# ssh and runs it there: under systemd --user when the board has a user
# manager, else with nohup. Reached through an ssh tunnel by default.
set -euo pipefail

PROG=deploy-ssh.sh
# shellcheck source=scripts/deploy-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/deploy-lib.sh"

usage() {
  cat <<EOF
Usage: scripts/$PROG [USER@]HOST [options] start|stop|restart|status [-- SERVE_ARGS...]

Copies edgeloop-agent and a token to HOST over ssh/scp
(~/.local/bin/edgeloop-agent, ~/.config/edgeloop/agent.token) and runs it
there, under systemd --user when HOST has a user manager (unit
edgeloop-agent.service), else with nohup and a pid file. By default the agent
listens on HOST's loopback and this machine reaches it through an ssh tunnel
(127.0.0.1:LOCAL_PORT here -> 127.0.0.1:PORT there).

Actions:
  start     copy, start, open the tunnel, check health; prints the URL and token file
  stop      stop the agent and close the tunnel
  restart   stop, then start
  status    whether the agent runs and answers (exit 0: running and answering,
            1: running but not answering, 3: not running)

Options:
  --binary PATH       agent binary to copy (default: the static build for HOST's
                      architecture, dist/edgeloop-agent-<arch>-linux-musl, built by
                      'scripts/build-agent.sh <arch>'; with --with-ort the glibc one,
                      dist/edgeloop-agent-<arch>-linux-gnu); e.g. target/release/edgeloop-agent
                      for a glibc build with ONNX Runtime made on a machine like HOST
  --with-ort          also copy ONNX Runtime's library for HOST's architecture to
                      ~/.local/lib/edgeloop/libonnxruntime.so and start the agent with
                      --ort-lib pointing at it. The library: \$EDGELOOP_ORT_<ARCH>
                      (e.g. EDGELOOP_ORT_AARCH64) if set, else
                      dist/onnxruntime-<arch>/libonnxruntime.so from
                      'scripts/fetch-ort.sh <arch>' (which 'scripts/build-agent.sh
                      aarch64-gnu' runs). A start without it removes a library an
                      earlier start copied
  --arch A            auto (default: ask 'uname -m' on HOST), x86_64 or aarch64;
                      picks the default binary and the --with-ort library
  --port N            port the agent listens on, on HOST (default 7878)
  --local-port N      tunnel entry on this machine (default: --port)
  --token-file FILE   token to use (default: created on first start, mode 600,
                      at ~/.config/edgeloop/tokens/<[user@]host>.token)
  --direct            no tunnel: the agent listens on 0.0.0.0:PORT (token
                      required) and is used at http://HOST:PORT; give it to
                      stop/status too
  --wait SECONDS      how long start waits for the agent to answer (default 15)
  -h, --help          this help

Arguments after -- go to 'edgeloop-agent serve' on start (letters, digits and
._/:=@,+- only), e.g. -- --device-id jetson-orin --ort-lib /opt/ort/lib/libonnxruntime.so.

ssh settings (user, port, key, jump host) come from ~/.ssh/config; use keys
or an agent, as every step is a separate ssh or scp call.

Examples:
  scripts/$PROG nvidia@jetson.local start
  scripts/$PROG nvidia@jetson.local --with-ort start   # glibc agent + ONNX Runtime
  scripts/$PROG pi@raspberrypi --arch aarch64 --local-port 7879 start
  scripts/$PROG lab-box --binary target/release/edgeloop-agent --direct start
  scripts/$PROG nvidia@jetson.local status
EOF
}

target="" binary="" arch=auto port=7878 local_port="" token_arg="" direct=0 with_ort=0 wait_s=15 action="" agent_args=()
ort_lib=""
while (($#)); do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --binary | --arch | --port | --local-port | --token-file | --wait)
      if (($# < 2)) || [[ -z $2 ]]; then usage_error "$1 needs a value"; fi
      case $1 in
        --binary) binary=$2 ;;
        --arch) arch=$2 ;;
        --port) port=$2 ;;
        --local-port) local_port=$2 ;;
        --token-file) token_arg=$2 ;;
        --wait) wait_s=$2 ;;
      esac
      shift 2 ;;
    --direct) direct=1; shift ;;
    --with-ort) with_ort=1; shift ;;
    start | stop | restart | status)
      [[ -z $action ]] || usage_error "one action at a time (got '$action' and '$1')"
      action=$1; shift ;;
    --) shift; agent_args=("$@"); break ;;
    -*) usage_error "unknown option '$1'" ;;
    *)
      [[ -z $target ]] || usage_error "one host at a time (got '$target' and '$1')"
      target=$1; shift ;;
  esac
done
[[ -n $target ]] || usage_error "no host given ([USER@]HOST)"
check_agent_args ${agent_args[@]+"${agent_args[@]}"}
[[ -n $action ]] || usage_error "no action given (start, stop, restart or status)"
case $arch in auto | x86_64 | aarch64) ;; *) usage_error "--arch must be auto, x86_64 or aarch64, got '$arch'" ;; esac
check_port --port "$port"
local_port=${local_port:-$port}
check_port --local-port "$local_port"
[[ $wait_s =~ ^[0-9]+$ ]] || usage_error "--wait must be a whole number of seconds, got '$wait_s'"

need_cmd ssh "install OpenSSH"
need_cmd scp "install OpenSSH"
need_cmd curl "needed for the health check"

# One control socket per host: stop and status find the tunnel through it.
TUNNEL_SOCK=${XDG_RUNTIME_DIR:-$HOME/.cache}/edgeloop/tunnel-$(file_safe "$target").sock

# Runs on the board, fed to `sh -s` over ssh so that it needs nothing but a
# POSIX shell there, whatever the login shell is. Paths are fixed so that
# stop/status find what start left.
# shellcheck disable=SC2016 # expanded on the board, not here
REMOTE_SH='set -eu
op=$1
shift
BIN=$HOME/.local/bin/edgeloop-agent
ORT_LIB=$HOME/.local/lib/edgeloop/libonnxruntime.so
TOKEN=$HOME/.config/edgeloop/agent.token
CACHE=$HOME/.cache/edgeloop-agent
STATE=$HOME/.local/state/edgeloop
LOG=$STATE/agent.log
PIDF=$STATE/agent.pid
UNIT=edgeloop-agent.service
UNIT_FILE=$HOME/.config/systemd/user/$UNIT
# A pid counts only while it is still the agent (pids get reused; an unreaped
# agent is a zombie with an empty cmdline).
alive() { kill -0 "$1" 2>/dev/null && grep -q edgeloop-agent "/proc/$1/cmdline" 2>/dev/null; }
has_systemd() { systemctl --user show-environment >/dev/null 2>&1; }
nohup_pid() {
  pid=$(cat "$PIDF" 2>/dev/null) || return 1
  [ -n "$pid" ] && alive "$pid" && echo "$pid"
}
case $op in
  state) # MODE running|stopped PID|- systemd|nohup|-
    if has_systemd; then mode="systemd"; else mode="nohup"; fi
    if [ $mode = systemd ] && [ -f "$UNIT_FILE" ] && systemctl --user is-active --quiet "$UNIT"; then
      echo "$mode running $(systemctl --user show -p MainPID "$UNIT" | sed "s/^MainPID=//") systemd"
    elif pid=$(nohup_pid); then
      echo "$mode running $pid nohup"
    else
      echo "$mode stopped - -"
    fi ;;
  prepare) # [ort]: ONNX Runtime is copied too (--with-ort)
    mkdir -p "$HOME/.local/bin" "$HOME/.config/edgeloop" "$STATE"
    chmod 700 "$HOME/.config/edgeloop"
    # The agent uses the library only when this start copies it, never one
    # left by an earlier start.
    if [ "${1:-}" = ort ]; then mkdir -p "$(dirname "$ORT_LIB")"; else rm -f "$ORT_LIB"; fi ;;
  start-systemd) # LISTEN [SERVE_ARGS...]
    listen=$1
    shift
    chmod 755 "$BIN"
    chmod 600 "$TOKEN"
    ort=""
    if [ -f "$ORT_LIB" ]; then ort=" --ort-lib %h/.local/lib/edgeloop/libonnxruntime.so"; fi
    mkdir -p "$(dirname "$UNIT_FILE")"
    cat >"$UNIT_FILE" <<EOF
[Unit]
Description=edgeloop device agent (measures ONNX models for edgeloop)
After=network.target

[Service]
ExecStart=%h/.local/bin/edgeloop-agent serve --listen $listen --token-file %h/.config/edgeloop/agent.token --cache-dir %h/.cache/edgeloop-agent$ort${*:+ $*}
Environment=NO_COLOR=1
Restart=on-failure
RestartSec=2

[Install]
WantedBy=default.target
EOF
    systemctl --user daemon-reload
    systemctl --user enable --quiet "$UNIT"
    systemctl --user restart "$UNIT"
    # Without lingering, systemd stops user services when the last session
    # of the user ends, i.e. right after this ssh call.
    if [ "$(loginctl show-user "$(id -un)" -p Linger 2>/dev/null)" != Linger=yes ] && ! loginctl enable-linger 2>/dev/null; then
      echo "warning: lingering is off for $(id -un) on $(hostname): the agent stops when your last session there ends; fix: sudo loginctl enable-linger $(id -un)" >&2
    fi ;;
  start-nohup) # LISTEN [SERVE_ARGS...]
    listen=$1
    shift
    chmod 755 "$BIN"
    chmod 600 "$TOKEN"
    rm -f "$PIDF"
    if [ -f "$ORT_LIB" ]; then set -- --ort-lib "$ORT_LIB" "$@"; fi
    setsid=""
    if command -v setsid >/dev/null 2>&1; then setsid=setsid; fi
    # The inner sh writes its own pid, then becomes the agent (exec).
    # NO_COLOR: plain text in the log.
    NO_COLOR=1 $setsid nohup sh -c "echo \$\$ >\"\$0\"; exec \"\$@\"" "$PIDF" "$BIN" serve --listen "$listen" --token-file "$TOKEN" --cache-dir "$CACHE" "$@" >"$LOG" 2>&1 </dev/null &
    ;;
  stop)
    out="not-running"
    if [ -f "$UNIT_FILE" ] && has_systemd; then
      if systemctl --user is-active --quiet "$UNIT"; then out="stopped systemd"; fi
      systemctl --user stop "$UNIT" || true
      systemctl --user disable --quiet "$UNIT" 2>/dev/null || true
    fi
    if pid=$(nohup_pid); then
      kill "$pid"
      i=0
      while alive "$pid" && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
      if alive "$pid"; then kill -9 "$pid"; fi
      out="stopped nohup $pid"
    fi
    rm -f "$PIDF"
    echo "$out" ;;
  log)
    if [ "$1" = systemd ]; then
      systemctl --user --no-pager status "$UNIT" 2>&1 | head -n 12 || true
      echo "--- last 40 lines of journalctl --user -u $UNIT ---"
      journalctl --user -u "$UNIT" -n 40 --no-pager 2>&1 || true
    else
      if pid=$(nohup_pid); then echo "agent process $pid is running"; else echo "agent process is not running"; fi
      echo "--- last 40 lines of $LOG ---"
      tail -n 40 "$LOG" 2>&1 || true
    fi ;;
  *) echo "unknown remote op $op" >&2; exit 2 ;;
esac
'

# ssh reads stdin even for commands that need none; </dev/null keeps it off
# whatever feeds this script.
# shellcheck disable=SC2029 # the command is meant to be sent as given
on_host() { ssh "$target" "$@" </dev/null; }
remote() { ssh "$target" sh -s -- "$@" <<<"$REMOTE_SH"; }

# The address HOST resolves to under ~/.ssh/config (aliases, HostName), for --direct.
direct_url() {
  local host
  host=$(ssh -G "$target" </dev/null | awk '$1 == "hostname" {print $2; exit}')
  [[ -n $host ]] || host=${target#*@}
  [[ $host == *:* ]] && host="[$host]" # IPv6 literal
  printf 'http://%s:%s\n' "$host" "$port"
}

tunnel_open() { [[ -e $TUNNEL_SOCK ]] && ssh -S "$TUNNEL_SOCK" -O check "$target" </dev/null >/dev/null 2>&1; }
close_tunnel() {
  if [[ -e $TUNNEL_SOCK ]]; then
    ssh -S "$TUNNEL_SOCK" -O exit "$target" </dev/null >/dev/null 2>&1 || true
    rm -f "$TUNNEL_SOCK"
    log "closed the ssh tunnel to $target"
  fi
}

stop_hint() {
  printf 'scripts/%s %q --port %q%s stop' "$PROG" "$target" "$port" "$([[ $direct == 1 ]] && echo ' --direct')"
}

# Sets arch to HOST's when it is auto and needed: for the default binary, or
# the library --with-ort copies.
resolve_arch() {
  [[ $arch == auto && ( -z $binary || $with_ort == 1 ) ]] || return 0
  local machine
  machine=$(on_host uname -m) || die "cannot reach $target over ssh (ssh $target uname -m failed)"
  case $machine in
    x86_64 | amd64) arch=x86_64 ;;
    aarch64 | arm64) arch=aarch64 ;;
    *) die "$target is '$machine': agents are built for x86_64 and aarch64 only; build one and pass --binary" ;;
  esac
  log "$target is $machine"
}

# Sets binary: the given one, else the build for HOST's architecture (static,
# or glibc with --with-ort); and ort_lib with --with-ort.
resolve_binary() {
  resolve_arch
  if [[ -z $binary ]]; then
    if [[ $with_ort == 1 ]]; then
      binary=$DIST_DIR/edgeloop-agent-$arch-linux-gnu
      case $arch in
        aarch64) [[ -f $binary ]] || die "no glibc agent at $binary: build it with 'scripts/build-agent.sh aarch64-gnu', or pass --binary PATH" ;;
        *) [[ -f $binary ]] || die "no glibc agent at $binary: pass --binary PATH (e.g. target/release/edgeloop-agent, built on a machine with HOST's distro)" ;;
      esac
    else
      binary=$DIST_DIR/edgeloop-agent-$arch-linux-musl
      [[ -f $binary ]] || die "no agent binary at $binary: build it with 'scripts/build-agent.sh $arch', or pass --binary PATH (e.g. target/release/edgeloop-agent: glibc, with ONNX Runtime)"
    fi
  fi
  [[ -f $binary ]] || die "no agent binary at $binary (--binary)"
  if [[ $with_ort == 1 ]]; then
    [[ $binary != *-linux-musl ]] ||
      die "$binary is a static musl agent, which cannot load ONNX Runtime: --with-ort needs a glibc one ('scripts/build-agent.sh aarch64-gnu')"
    local var
    var=EDGELOOP_ORT_$(printf '%s' "$arch" | tr '[:lower:]' '[:upper:]')
    ort_lib=${!var:-$DIST_DIR/onnxruntime-$arch/libonnxruntime.so}
    [[ -f $ort_lib ]] ||
      die "no ONNX Runtime library for $arch at $ort_lib: fetch it with 'scripts/fetch-ort.sh $arch' (or set $var)"
  fi
}

start() {
  local state mode state_run state_pid state_via listen url token_file
  resolve_binary
  token_file=$(resolve_token_file "$token_arg" "$target")

  state=$(remote state) || die "cannot run commands on $target over ssh"
  read -r mode state_run state_pid state_via <<<"$state"
  [[ $state_run == stopped ]] ||
    die "edgeloop-agent already runs on $target (pid $state_pid, $state_via); use 'restart' (or 'stop' first)"
  if [[ $with_ort == 1 ]]; then remote prepare ort; else remote prepare; fi
  log "copying $binary to $target:.local/bin/edgeloop-agent"
  scp -q "$binary" "$target:.local/bin/edgeloop-agent"
  scp -q "$token_file" "$target:.config/edgeloop/agent.token"
  if [[ $with_ort == 1 ]]; then
    log "copying $ort_lib to $target:.local/lib/edgeloop/libonnxruntime.so"
    scp -q "$ort_lib" "$target:.local/lib/edgeloop/libonnxruntime.so"
  fi

  if [[ $direct == 1 ]]; then listen=0.0.0.0:$port; else listen=127.0.0.1:$port; fi
  log "starting the agent on $target, $listen, under $([[ $mode == systemd ]] && echo 'systemd --user' || echo nohup)$([[ $with_ort == 1 ]] && echo ', with ONNX Runtime')"
  remote "start-$mode" "$listen" ${agent_args[@]+"${agent_args[@]}"}

  if [[ $direct == 1 ]]; then
    url=$(direct_url)
  else
    close_tunnel
    mkdir -p "$(dirname "$TUNNEL_SOCK")"
    # -M -S: a master connection with a control socket, so stop can close
    # exactly this tunnel; ExitOnForwardFailure: fail now if the local port is taken.
    ssh -f -N -M -S "$TUNNEL_SOCK" -o ExitOnForwardFailure=yes -L "$local_port:127.0.0.1:$port" "$target" </dev/null ||
      die "could not open the ssh tunnel 127.0.0.1:$local_port -> $target:127.0.0.1:$port (local port taken? pick another --local-port); the agent runs: $(stop_hint)"
    url=http://127.0.0.1:$local_port
  fi

  log "checking $url/v1/health"
  if ! wait_healthy "$url" "$token_file" "$wait_s"; then
    {
      echo "--- on $target ---"
      remote log "$mode"
    } >&2
    die "edgeloop-agent on $target failed its health check (see the log above); clean up with: $(stop_hint)"
  fi
  print_success "$target" "$url" "$token_file" "$(stop_hint)"
}

stop() {
  local out
  out=$(remote stop) || die "cannot run commands on $target over ssh"
  case $out in
    "stopped systemd") log "edgeloop-agent on $target: stopped (systemd unit)" ;;
    stopped*) log "edgeloop-agent on $target: stopped (pid ${out#stopped nohup })" ;;
    *) log "edgeloop-agent on $target: was not running" ;;
  esac
  close_tunnel
}

status() {
  local state mode run pid via url
  state=$(remote state) || die "cannot run commands on $target over ssh"
  read -r mode run pid via <<<"$state"
  if [[ $run != running ]]; then
    echo "edgeloop-agent on $target: not running"
    exit 3
  fi
  if [[ $direct == 1 ]]; then
    url=$(direct_url)
  elif tunnel_open; then
    url=http://127.0.0.1:$local_port
  else
    echo "edgeloop-agent on $target: running (pid $pid, $via), but no ssh tunnel is open (run 'restart', or pass --direct if it listens on the network)"
    exit 1
  fi
  if curl -fsS --max-time 3 -o /dev/null "$url/v1/health" 2>/dev/null; then
    echo "edgeloop-agent on $target: running (pid $pid, $via), healthy at $url"
  else
    echo "edgeloop-agent on $target: running (pid $pid, $via), but $url/v1/health does not answer"
    exit 1
  fi
}

case $action in
  start) start ;;
  stop) stop ;;
  # The binary (and library) are checked first, so that a failing restart
  # leaves the agent running.
  restart) resolve_binary; stop; start ;;
  status) status ;;
esac
