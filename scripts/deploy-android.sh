#!/usr/bin/env bash
# Puts edgeloop-agent on an Android phone over adb and runs it there on the
# phone's loopback, reachable from this machine through `adb forward`.
set -euo pipefail

PROG=deploy-android.sh
# shellcheck source=scripts/deploy-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/deploy-lib.sh"

usage() {
  cat <<EOF
Usage: scripts/$PROG [options] start|stop|restart|status [-- SERVE_ARGS...]

Puts edgeloop-agent on an Android phone through adb, runs it in the
background on the phone's loopback (127.0.0.1:PORT) with a token, and forwards
127.0.0.1:LOCAL_PORT on this machine to it (adb forward).

Actions:
  start     push the agent and token to /data/local/tmp, start the agent,
            forward the port, check its health; prints the URL and token file
  stop      kill the agent (pid file) and remove the port forward
  restart   stop, then start
  status    whether the agent runs and answers through the forward
            (exit 0: running and answering, 1: running but not answering
            or not forwarded, 3: not running)

Options:
  --serial SERIAL     phone to use (as listed by 'adb devices'); needed when
                      several are attached; passed to adb as -s SERIAL
  --binary PATH       agent binary to push
                      (default: dist/edgeloop-agent-aarch64-linux-musl, built
                      by 'scripts/build-agent.sh aarch64')
  --port N            port the agent listens on, on the phone (default 7878)
  --local-port N      port on this machine forwarded to it (default: --port);
                      give each phone its own when several are attached
  --token-file FILE   token to use (default: created on first start, mode 600,
                      at ~/.config/edgeloop/tokens/<serial>.token)
  --wait SECONDS      how long start waits for the agent to answer (default 15)
  -h, --help          this help

Arguments after -- go to 'edgeloop-agent serve' on start (letters, digits and
._/:=@,+- only), e.g. -- --device-id pixel7 --energy-sensor android.

Examples:
  scripts/$PROG start
  scripts/$PROG --serial R58M12345 --local-port 7879 start
  scripts/$PROG --serial R58M12345 status
  scripts/$PROG --serial R58M12345 restart -- --device-id pixel7
EOF
}

serial="" binary="" port=7878 local_port="" token_arg="" wait_s=15 action="" agent_args=()
while (($#)); do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --serial | --binary | --port | --local-port | --token-file | --wait)
      if (($# < 2)) || [[ -z $2 ]]; then usage_error "$1 needs a value"; fi
      case $1 in
        --serial) serial=$2 ;;
        --binary) binary=$2 ;;
        --port) port=$2 ;;
        --local-port) local_port=$2 ;;
        --token-file) token_arg=$2 ;;
        --wait) wait_s=$2 ;;
      esac
      shift 2 ;;
    start | stop | restart | status)
      [[ -z $action ]] || usage_error "one action at a time (got '$action' and '$1')"
      action=$1; shift ;;
    --) shift; agent_args=("$@"); break ;;
    *) usage_error "unknown argument '$1'" ;;
  esac
done
check_agent_args ${agent_args[@]+"${agent_args[@]}"}
[[ -n $action ]] || usage_error "no action given (start, stop, restart or status)"
check_port --port "$port"
local_port=${local_port:-$port}
check_port --local-port "$local_port"
[[ $wait_s =~ ^[0-9]+$ ]] || usage_error "--wait must be a whole number of seconds, got '$wait_s'"
binary=${binary:-$DIST_DIR/edgeloop-agent-aarch64-linux-musl}

need_cmd adb "install Android platform-tools"
need_cmd curl "needed for the health check"

# Everything lives in /data/local/tmp: the one place the adb shell user may
# write and execute on an unrooted phone.
DEV_DIR=/data/local/tmp
DEV_BIN=$DEV_DIR/edgeloop-agent
DEV_TOKEN=$DEV_DIR/edgeloop-agent.token
DEV_CACHE=$DEV_DIR/edgeloop-cache
DEV_LOG=$DEV_DIR/edgeloop-agent.log
DEV_PID=$DEV_DIR/edgeloop-agent.pid
# A pid from the pid file counts only if it is still the agent: pids get
# reused, and a killed agent nobody reaped is a zombie with an empty cmdline.
# shellcheck disable=SC2016 # expanded on the phone
ALIVE_FN='alive() { kill -0 "$1" 2>/dev/null && grep -q edgeloop-agent "/proc/$1/cmdline" 2>/dev/null; }'
PID_CHECK="$ALIVE_FN; pid=\$(cat $DEV_PID 2>/dev/null); if [ -n \"\$pid\" ] && alive \"\$pid\"; then echo \"running \$pid\"; else echo stopped; fi"

ADB=(adb)

# Picks the phone: --serial must be attached and authorised; without it
# exactly one phone may be. Every later adb call then names it with -s, so
# a phone plugged in meanwhile cannot receive half of the commands.
resolve_serial() {
  local out ready
  if [[ -n $serial ]]; then
    out=$(adb -s "$serial" get-state 2>&1 | tr -d '\r') ||
      die "device '$serial' is not available: $out (attached devices: 'adb devices')"
    [[ $out == device ]] ||
      die "device '$serial' is '$out', not ready (unauthorized: unlock the phone and accept the USB debugging prompt)"
  else
    out=$(adb devices | tr -d '\r' | sed -e '1{/^List of devices/d;}' -e '/^[[:space:]]*$/d') ||
      die "'adb devices' failed"
    ready=$(printf '%s\n' "$out" | awk '$2 == "device" {print $1}')
    case $(printf '%s\n' "$out" | awk '$2 == "device"' | wc -l | tr -d ' ') in
      0) die "no phone ready over adb (connect one with USB debugging on and accept its prompt); 'adb devices' lists:
${out:-  (nothing)}" ;;
      1) serial=$ready ;;
      *) die "several devices are attached; pick one with --serial (and a --local-port each):
$(printf '%s\n' "$out" | sed 's/^/  /')" ;;
    esac
  fi
  ADB=(adb -s "$serial")
}

# adb shell would hand our stdin to the phone: keep it off.
adb_shell() { "${ADB[@]}" shell "$@" </dev/null; }
agent_state() { adb_shell "$PID_CHECK" | tr -d '\r'; }

# Local ports forwarded from this phone to the agent's port.
our_forwards() {
  "${ADB[@]}" forward --list | tr -d '\r' |
    awk -v s="$serial" -v r="tcp:$port" '$1 == s && $3 == r {sub(/^tcp:/, "", $2); print $2}'
}

stop_hint() {
  printf 'scripts/%s --serial %q --port %q stop' "$PROG" "$serial" "$port"
}

check_binary() {
  [[ -f $binary ]] || die "no agent binary at $binary: build it with 'scripts/build-agent.sh aarch64' (static musl) or pass --binary PATH"
}

start() {
  resolve_serial
  check_binary
  local token_file state other url
  token_file=$(resolve_token_file "$token_arg" "$serial")
  state=$(agent_state)
  [[ $state == stopped ]] ||
    die "edgeloop-agent already runs on $serial (pid ${state#running }); use 'restart' (or 'stop' first)"
  # adb forward silently re-points a local port: refuse to take one that
  # another phone (or another port) uses.
  other=$("${ADB[@]}" forward --list | tr -d '\r' |
    awk -v l="tcp:$local_port" -v s="$serial" -v r="tcp:$port" '$2 == l && ($1 != s || $3 != r) {print $1 " " $3}')
  [[ -z $other ]] ||
    die "local port $local_port is already forwarded to $other (adb forward --list); pick another --local-port"

  log "pushing $binary to $serial:$DEV_BIN"
  "${ADB[@]}" push "$binary" "$DEV_BIN" >&2
  "${ADB[@]}" push "$token_file" "$DEV_TOKEN" >&2
  adb_shell "chmod 755 $DEV_BIN && chmod 600 $DEV_TOKEN"
  log "starting the agent on $serial, 127.0.0.1:$port (log: $DEV_LOG)"
  # setsid + nohup: the agent must outlive this adb shell session. The inner
  # sh writes its own pid and then becomes the agent (exec), so the pid file
  # is right whether or not setsid forks. NO_COLOR: plain text in the log.
  adb_shell "cd $DEV_DIR && rm -f $DEV_PID && { NO_COLOR=1 setsid nohup sh -c 'echo \$\$ >$DEV_PID; exec $DEV_BIN serve --listen 127.0.0.1:$port --token-file $DEV_TOKEN --cache-dir $DEV_CACHE${agent_args[*]+ ${agent_args[*]}}' >$DEV_LOG 2>&1 </dev/null & }"
  "${ADB[@]}" forward "tcp:$local_port" "tcp:$port"

  url=http://127.0.0.1:$local_port
  log "checking $url/v1/health"
  if ! wait_healthy "$url" "$token_file" "$wait_s"; then
    {
      echo "--- on $serial ---"
      adb_shell "$ALIVE_FN; pid=\$(cat $DEV_PID 2>/dev/null); if [ -n \"\$pid\" ] && alive \"\$pid\"; then echo \"agent process \$pid is running\"; else echo 'agent process is not running'; fi; echo '--- last 40 lines of $DEV_LOG ---'; tail -n 40 $DEV_LOG 2>&1" |
        tr -d '\r'
    } >&2
    die "edgeloop-agent on $serial failed its health check (see the log above); clean up with: $(stop_hint)"
  fi
  print_success "$serial" "$url" "$token_file" "$(stop_hint)"
}

stop() {
  resolve_serial
  local out fwd
  out=$(adb_shell "$ALIVE_FN; pid=\$(cat $DEV_PID 2>/dev/null); if [ -n \"\$pid\" ] && alive \"\$pid\"; then kill \"\$pid\"; i=0; while alive \"\$pid\" && [ \$i -lt 50 ]; do sleep 0.1; i=\$((i+1)); done; if alive \"\$pid\"; then kill -9 \"\$pid\"; fi; echo \"stopped \$pid\"; else echo 'not running'; fi; rm -f $DEV_PID" |
    tr -d '\r')
  case $out in
    stopped*) log "edgeloop-agent on $serial: stopped (pid ${out#stopped })" ;;
    *) log "edgeloop-agent on $serial: was not running" ;;
  esac
  # Whatever local port start used, its forward points at tcp:PORT.
  for fwd in $(our_forwards); do
    "${ADB[@]}" forward --remove "tcp:$fwd"
    log "removed forward 127.0.0.1:$fwd -> $serial:$port"
  done
}

status() {
  resolve_serial
  local state fwd
  state=$(agent_state)
  fwd=$(our_forwards | head -n 1)
  if [[ $state != running* ]]; then
    echo "edgeloop-agent on $serial: not running${fwd:+ (a stale forward from 127.0.0.1:$fwd remains)}"
    exit 3
  fi
  if [[ -z $fwd ]]; then
    echo "edgeloop-agent on $serial: running (pid ${state#running }), but no forward to port $port (run 'restart')"
    exit 1
  fi
  if curl -fsS --max-time 3 -o /dev/null "http://127.0.0.1:$fwd/v1/health" 2>/dev/null; then
    echo "edgeloop-agent on $serial: running (pid ${state#running }), healthy at http://127.0.0.1:$fwd"
  else
    echo "edgeloop-agent on $serial: running (pid ${state#running }), but http://127.0.0.1:$fwd/v1/health does not answer"
    exit 1
  fi
}

case $action in
  start) start ;;
  stop) stop ;;
  # The binary is checked first, so that a failing restart leaves the agent running.
  restart) check_binary; stop; start ;;
  status) status ;;
esac
