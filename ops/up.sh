#!/usr/bin/env bash
# Brings the whole control plane up on this machine with one command:
#   1. installs missing Debian packages (ops/install-deps.sh),
#   2. builds the sandbox-executor:v1.0 image (ops/images/build.sh, cached),
#   3. builds the services (cargo build --release --bins),
#   4. starts nats-server (JetStream), scheduler-worker, node-daemon and api-gateway in the
#      background, detached from this shell, with logs in <run>/logs/<name>.log and pids in
#      <run>/pids/<name>.pid,
#   5. waits until the API answers /healthz and lists an online node, then prints how to use it.
# If start-up fails it prints the end of each log, stops what it started and exits non-zero.
# If everything is already running it says so and exits 0. Stop with ops/down.sh.
#
# Usage: ops/up.sh
# Env:
#   SANDBOX_RUN_DIR       run folder (default <repo>/.run)
#   SANDBOX_NATS_HOST     address nats-server binds (default 127.0.0.1)
#   SANDBOX_NATS_PORT     NATS client port (default 4222)
#   API_GATEWAY_LISTEN    address of the HTTP API (default 127.0.0.1:8000; 0.0.0.0:8000 for
#                         other hosts)
#   API_GATEWAY_INTERNAL_LISTEN  address of the internal endpoints (default 127.0.0.1:8001)
#   API_GATEWAY_INTERNAL_TOKEN, API_GATEWAY_INTERNAL_TOKEN_FILE  their bearer token; with
#                         neither, a random token is written once to <run>/internal-token
#   DATABASE_URL          scheduler database (default sqlite://<run>/sandbox.db)
#   SANDBOX_UP_TIMEOUT    seconds to wait for the API and an online node (default 60)
#   SANDBOX_SKIP_PREPARE  1 = skip steps 1-3 and use the binaries already built
#   CARGO_TARGET_DIR      cargo's target folder (default <repo>/target)
#   SANDBOX_BIN_DIR       folder of the service binaries (default <target>/release)
#   RUST_LOG              service log filter (default info); NODE_DAEMON_*, SCHEDULER_*,
#                         API_GATEWAY_* and OTEL_* variables are passed on to the services
set -euo pipefail
# shellcheck source=ops/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RUN_DIR="$(sandbox_run_dir)"
NATS_HOST="$(sandbox_nats_host)"
NATS_PORT="$(sandbox_nats_port)"
NATS_URL="$(sandbox_nats_url)"
GATEWAY_LISTEN="${API_GATEWAY_LISTEN:-127.0.0.1:8000}"
GATEWAY_HOST="${GATEWAY_LISTEN%:*}"
GATEWAY_PORT="${GATEWAY_LISTEN##*:}"
API_URL="http://$(connect_host "$GATEWAY_HOST"):$GATEWAY_PORT"
INTERNAL_LISTEN="${API_GATEWAY_INTERNAL_LISTEN:-127.0.0.1:8001}"
INTERNAL_HOST="${INTERNAL_LISTEN%:*}"
INTERNAL_PORT="${INTERNAL_LISTEN##*:}"
INTERNAL_URL="http://$(connect_host "$INTERNAL_HOST"):$INTERNAL_PORT"
if [[ -n "${API_GATEWAY_INTERNAL_TOKEN:-}" ]]; then
    TOKEN_HINT="the value of API_GATEWAY_INTERNAL_TOKEN"
    TOKEN_CMD='$API_GATEWAY_INTERNAL_TOKEN'
else
    TOKEN_FILE="${API_GATEWAY_INTERNAL_TOKEN_FILE:-$RUN_DIR/internal-token}"
    TOKEN_HINT="$TOKEN_FILE"
    TOKEN_CMD="\$(cat $TOKEN_FILE)"
fi
DATABASE_URL="${DATABASE_URL:-sqlite://$RUN_DIR/sandbox.db}"
TIMEOUT="${SANDBOX_UP_TIMEOUT:-60}"
SKIP_PREPARE="${SANDBOX_SKIP_PREPARE:-0}"
BIN_DIR="${SANDBOX_BIN_DIR:-$(cargo_target_dir)/release}"
export RUST_LOG="${RUST_LOG:-info}"

[[ "$NATS_PORT" =~ ^[0-9]+$ ]] || die "SANDBOX_NATS_PORT must be a port number, not '$NATS_PORT'"
[[ "$GATEWAY_PORT" =~ ^[0-9]+$ && "$GATEWAY_LISTEN" == *:* ]] ||
    die "API_GATEWAY_LISTEN must be HOST:PORT such as 127.0.0.1:8000, not '$GATEWAY_LISTEN'"
[[ "$INTERNAL_PORT" =~ ^[0-9]+$ && "$INTERNAL_LISTEN" == *:* ]] ||
    die "API_GATEWAY_INTERNAL_LISTEN must be HOST:PORT such as 127.0.0.1:8001, not '$INTERNAL_LISTEN'"
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || die "SANDBOX_UP_TIMEOUT must be a number of seconds"

print_usage_notes() {
    local db_hint
    case "$DATABASE_URL" in
        sqlite:*)
            local db_path="${DATABASE_URL#sqlite:}"
            db_path="${db_path#//}"
            db_path="${db_path%%\?*}"
            [[ "$db_path" == /* ]] || db_path="$RUN_DIR/$db_path"
            db_hint="sqlite3 $db_path \"SELECT id, container_id, status FROM sessions ORDER BY created_at DESC LIMIT 1;\""
            ;;
        *) db_hint="psql '$DATABASE_URL' -c \"SELECT id, container_id, status FROM sessions ORDER BY created_at DESC LIMIT 1;\"" ;;
    esac
    cat <<EOF

The sandbox control plane is up.
  API          $API_URL   (nodes: curl -s $API_URL/api/v1/nodes | jq)
  NATS         $NATS_URL
  Internal     $INTERNAL_URL/internal/runtime/{nodes/register,heartbeat,containers/ready,containers/exited}
               token in $TOKEN_HINT:
               curl -s -X POST $INTERNAL_URL/internal/runtime/heartbeat -H "Authorization: Bearer $TOKEN_CMD" -H 'Content-Type: application/json' -d '{"node_id":"<node>"}'
  Create       curl -s -X POST $API_URL/api/v1/sessions -H 'Content-Type: application/json' -d '{"template_id":"python-basic"}' | jq
  Get          curl -s $API_URL/api/v1/sessions/<id> | jq
  Delete       curl -s -X DELETE $API_URL/api/v1/sessions/<id>
  Containers   docker ps --filter label=$SANDBOX_MANAGED_LABEL
  Logs         $RUN_DIR/logs/{$(IFS=,; echo "${SANDBOX_SERVICES[*]}")}.log
  Heartbeats   $SANDBOX_OPS_DIR/watch.sh runtime.heartbeat
  Database     $db_hint
  Stop         $SANDBOX_OPS_DIR/down.sh   (--purge also removes sandbox containers and $RUN_DIR)
EOF
}

# --- already running? -------------------------------------------------------------------------
running=() stopped=()
for service in "${SANDBOX_SERVICES[@]}"; do
    if service_pid "$service" >/dev/null; then
        running+=("$service")
    else
        stopped+=("$service")
    fi
done
if ((${#stopped[@]} == 0)); then
    info "already running (${running[*]}); nothing to do"
    print_usage_notes
    exit 0
fi
if ((${#running[@]} > 0)); then
    die "partly running: ${running[*]} up, ${stopped[*]} not; run $SANDBOX_OPS_DIR/down.sh, then this again"
fi

# Nothing of ours runs, so whatever listens on our ports belongs to someone else.
check_port_free() {
    local what="$1" host="$2" port="$3" knob="$4"
    if port_open "$(connect_host "$host")" "$port"; then
        die "port $port ($what) is taken by a program that up.sh did not start$(port_owner "$port"); stop it, or pick another port with $knob"
    fi
}
check_ports() {
    check_port_free "NATS" "$NATS_HOST" "$NATS_PORT" SANDBOX_NATS_PORT
    check_port_free "HTTP API" "$GATEWAY_HOST" "$GATEWAY_PORT" API_GATEWAY_LISTEN
    check_port_free "internal endpoints" "$INTERNAL_HOST" "$INTERNAL_PORT" API_GATEWAY_INTERNAL_LISTEN
}
check_ports

# --- prepare ----------------------------------------------------------------------------------
total_start="$(now_us)"
if [[ "$SKIP_PREPARE" != 1 ]]; then
    prepare_release
else
    require_docker
fi

NATS_BIN="$(command -v nats-server)" || die "nats-server is not installed: run $SANDBOX_OPS_DIR/install-deps.sh"
for service in scheduler-worker node-daemon api-gateway; do
    [[ -x "$BIN_DIR/$service" ]] ||
        die "$BIN_DIR/$service is missing: run cargo build --release --bins (or ops/up.sh without SANDBOX_SKIP_PREPARE)"
done
check_ports # the build took a while; look again

# --- start ------------------------------------------------------------------------------------
mkdir -p "$RUN_DIR/logs" "$RUN_DIR/pids" "$RUN_DIR/nats"
started=()
up_ok=false

print_log_tails() {
    local service log
    for service in "${SANDBOX_SERVICES[@]}"; do
        log="$(log_file "$service")"
        [[ -s "$log" ]] || continue
        printf '\n----- %s (last 30 lines of %s) -----\n' "$service" "$log" >&2
        tail -n 30 "$log" >&2
    done
}

on_exit() {
    local status=$?
    if ! $up_ok && ((${#started[@]} > 0)); then
        print_log_tails
        warn "start-up failed; stopping what this run started"
        local index
        for ((index = ${#started[@]} - 1; index >= 0; index--)); do
            stop_service "${started[index]}" 5 || true
        done
    fi
    exit "$status"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start_service NAME COMMAND...: runs COMMAND in its own session, detached from this shell, in
# the run folder; stdout and stderr go to the service's log. The pid file is written by the
# process itself just before it becomes COMMAND, so it names the service and not a wrapper.
start_service() {
    local name="$1" log pid_path pid waited=0
    shift
    log="$(log_file "$name")"
    pid_path="$(pid_file "$name")"
    if [[ -e "$log" ]]; then
        mv -f -- "$log" "$log.prev"
    fi
    rm -f -- "$pid_path"
    (
        cd "$RUN_DIR"
        # shellcheck disable=SC2016 # expanded by the inner bash
        setsid -f bash -c 'echo "$$" >"$0"; exec "$@"' "$pid_path" "$@" >"$log" 2>&1 </dev/null
    )
    while [[ ! -s "$pid_path" ]]; do
        ((waited++ < 50)) || die "$name did not start (no pid file after 5 s); see $log"
        sleep 0.1
    done
    pid="$(head -n 1 "$pid_path")"
    started+=("$name")
    # Until the wrapper has become the service, pid checks (and so down.sh) would not know it.
    until pid_is "$pid" "$name"; do
        pid_alive "$pid" || break # exited at once; the readiness checks report it
        ((waited++ < 100)) || die "$name (pid $pid) did not start its program within 10 s"
        sleep 0.1
    done
    info "started $name (pid $pid, log $log)"
}

service_alive() {
    local pid
    pid="$(head -n 1 "$(pid_file "$1")" 2>/dev/null)" && pid_alive "$pid"
}

# Fails (with the reason) when a started service has exited.
check_started_alive() {
    local service
    for service in "${started[@]}"; do
        if ! service_alive "$service"; then
            warn "$service exited during start-up (log: $(log_file "$service"))"
            return 1
        fi
    done
}

wait_for_nats() {
    local deadline=$(($(now_us) + 15 * 1000000))
    until port_open "$(connect_host "$NATS_HOST")" "$NATS_PORT"; do
        check_started_alive || return 1
        if (($(now_us) > deadline)); then
            warn "nats-server does not accept connections on port $NATS_PORT after 15 s"
            return 1
        fi
        sleep 0.1
    done
}

wait_for_api() {
    local deadline=$(($(now_us) + TIMEOUT * 1000000)) healthy=false nodes=""
    while (($(now_us) < deadline)); do
        check_started_alive || return 1
        if ! $healthy && curl -fsS --max-time 2 "$API_URL/healthz" >/dev/null 2>&1; then
            healthy=true
            info "the API answers on $API_URL/healthz; waiting for an online node"
        fi
        if $healthy && nodes="$(curl -fsS --max-time 2 "$API_URL/api/v1/nodes" 2>/dev/null)" &&
            jq -e '[.nodes[]? | select(.status == "online")] | length > 0' >/dev/null 2>&1 <<<"$nodes"; then
            info "online: $(jq -r '[.nodes[] | select(.status == "online") | .node_id] | join(", ")' <<<"$nodes")"
            return 0
        fi
        sleep 0.5
    done
    if $healthy; then
        warn "no online node in GET $API_URL/api/v1/nodes after ${TIMEOUT}s; last answer: ${nodes:-none}"
    else
        warn "$API_URL/healthz did not answer within ${TIMEOUT}s"
    fi
    return 1
}

# An execution's result carries up to 1 MiB of stdout and of stderr: raise NATS's 1 MB default
# message size (only settable in a config file).
printf 'max_payload: 8MB\n' >"$RUN_DIR/nats.conf"
start_service nats-server "$NATS_BIN" -c "$RUN_DIR/nats.conf" -js -a "$NATS_HOST" -p "$NATS_PORT" \
    -sd "$RUN_DIR/nats" -n sandbox-nats
wait_for_nats || die "nats-server did not come up"

start_service scheduler-worker env SCHEDULER_NATS_URL="$NATS_URL" DATABASE_URL="$DATABASE_URL" \
    "$BIN_DIR/scheduler-worker"
start_service node-daemon env NODE_DAEMON_NATS_URL="$NATS_URL" "$BIN_DIR/node-daemon"
# The internal endpoints always get a token: a random one, kept across runs, unless configured.
internal_env=(API_GATEWAY_INTERNAL_LISTEN="$INTERNAL_LISTEN")
if [[ -n "${TOKEN_FILE:-}" ]]; then
    if [[ ! -s "$TOKEN_FILE" ]]; then
        (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$TOKEN_FILE")
        info "wrote a random internal token to $TOKEN_FILE"
    fi
    internal_env+=(API_GATEWAY_INTERNAL_TOKEN_FILE="$TOKEN_FILE")
fi
start_service api-gateway env API_GATEWAY_NATS_URL="$NATS_URL" API_GATEWAY_LISTEN="$GATEWAY_LISTEN" \
    "${internal_env[@]}" "$BIN_DIR/api-gateway"

wait_for_api || die "the control plane did not become ready"
up_ok=true
info "up in $(elapsed_since "$total_start")"
print_usage_notes
