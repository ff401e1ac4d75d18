# shellcheck shell=bash
# Shared helpers for the ops/ scripts. Source it, do not run it:
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# It gives: logging (info/warn/die), step timing (run_step), root and command checks, the run
# folder layout (pid files, logs) that up.sh and down.sh share, process checks that survive pid
# reuse and zombies, and a port probe.
#
# Environment knobs read here (the scripts document which of them they use):
#   SANDBOX_RUN_DIR    run folder (default: <repo>/.run): pids/, logs/, nats/, sandbox.db
#   SANDBOX_NATS_HOST  address nats-server binds (default 127.0.0.1)
#   SANDBOX_NATS_PORT  port nats-server listens on (default 4222)
#   NO_COLOR           set to anything to print without colour

if [[ -n "${SANDBOX_OPS_LIB_LOADED:-}" ]]; then
    return 0
fi
SANDBOX_OPS_LIB_LOADED=1

SANDBOX_OPS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SANDBOX_REPO_ROOT="$(cd "$SANDBOX_OPS_DIR/.." && pwd)"
SANDBOX_SCRIPT_NAME="$(basename "${BASH_SOURCE[1]:-$0}")"

# Debian keeps nats-server, debootstrap and runuser in sbin, which is not on every PATH.
case ":$PATH:" in
    *:/usr/sbin:*) ;;
    *) PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin" ;;
esac
export PATH

# The services up.sh starts, in start order; down.sh stops them in the reverse order.
# shellcheck disable=SC2034 # used by the scripts that source this file
SANDBOX_SERVICES=(nats-server scheduler-worker node-daemon api-gateway)

# Docker label of everything a node daemon makes (messages::labels::MANAGED_BY / MANAGER).
# shellcheck disable=SC2034 # used by the scripts that source this file
SANDBOX_MANAGED_LABEL="io.sandbox.managed-by=sandbox-node-daemon"

if [[ -t 2 && -z "${NO_COLOR:-}" ]]; then
    _c_bold=$'\e[1m' _c_red=$'\e[31m' _c_yellow=$'\e[33m' _c_reset=$'\e[0m'
else
    _c_bold='' _c_red='' _c_yellow='' _c_reset=''
fi

info() { printf '%s[%s]%s %s\n' "$_c_bold" "$SANDBOX_SCRIPT_NAME" "$_c_reset" "$*" >&2; }
warn() { printf '%s[%s] warning:%s %s\n' "$_c_yellow" "$SANDBOX_SCRIPT_NAME" "$_c_reset" "$*" >&2; }
die() {
    printf '%s[%s] error:%s %s\n' "$_c_red" "$SANDBOX_SCRIPT_NAME" "$_c_reset" "$*" >&2
    exit 1
}

# Microseconds since the epoch (EPOCHREALTIME's decimal mark follows the locale).
now_us() {
    local t="${EPOCHREALTIME//[.,]/}"
    printf '%s\n' "$((10#$t))"
}

# "12.3s" since a now_us reading.
elapsed_since() {
    local start="$1" end
    end="$(now_us)"
    local tenths=$(((end - start) / 100000))
    printf '%d.%ds\n' "$((tenths / 10))" "$((tenths % 10))"
}

# run_step LABEL COMMAND...: runs COMMAND, prints how long it took (also left in
# SANDBOX_STEP_ELAPSED), returns its status.
# COMMAND runs in a subshell (it cannot set variables of the caller) with errexit on. Beware:
# bash switches errexit off, with no way back, for everything run under `if`, `||` or `&&`. So
# `run_step ... || die ...` is fine for an external command (a script, cargo, apt-get), but a
# shell function given as COMMAND must then check its own errors; called as a plain command,
# run_step's failure ends a `set -e` script after printing the FAILED line.
run_step() {
    local label="$1" start status
    shift
    info "==> $label"
    start="$(now_us)"
    set +e
    (
        set -e
        "$@"
    )
    status=$?
    set -e
    SANDBOX_STEP_ELAPSED="$(elapsed_since "$start")"
    if ((status == 0)); then
        info "<== $label: done in $SANDBOX_STEP_ELAPSED"
    else
        warn "<== $label: FAILED (exit $status) after $SANDBOX_STEP_ELAPSED"
    fi
    return "$status"
}

# package_installed PACKAGE [ROOT]: true when dpkg (of the root filesystem ROOT, default /)
# has PACKAGE installed.
package_installed() {
    local admindir="${2:-}/var/lib/dpkg" status
    # shellcheck disable=SC2016 # a dpkg-query format, not a shell expansion
    status="$(dpkg-query --admindir="$admindir" -W -f '${db:Status-Status}' "$1" 2>/dev/null)" || return 1
    [[ "$status" == installed ]]
}

require_root() {
    if ((EUID != 0)); then
        die "$1 needs root (it runs as uid $EUID); run it again with sudo or as root"
    fi
}

# require_cmd COMMAND HINT: dies with HINT when COMMAND is not on PATH.
require_cmd() {
    command -v "$1" >/dev/null 2>&1 || die "'$1' is not installed: $2"
}

require_docker() {
    require_cmd docker "install Docker Engine (Debian: apt-get install docker.io) and start it"
    local out
    if ! out="$(docker info --format '{{.ServerVersion}}' 2>&1)"; then
        die "cannot reach the Docker engine: $out"
    fi
}

# prepare_release: what running from the release binaries needs, each step timed: the missing
# packages, Docker, the executor image, the release build (with the node daemon's simulated fleet,
# which the benchmark runs).
prepare_release() {
    run_step "install missing packages" bash "$SANDBOX_OPS_DIR/install-deps.sh" ||
        die "installing the dependencies failed"
    require_docker
    run_step "executor image" bash "$SANDBOX_OPS_DIR/images/build.sh" ||
        die "building the sandbox-executor image failed"
    require_cmd cargo "install the Rust toolchain (rustup)"
    run_step "cargo build --release --bins --features node-daemon/simulation" \
        env -C "$SANDBOX_REPO_ROOT" cargo build --release --bins --features node-daemon/simulation ||
        die "the build failed (see above)"
}

# Cargo's target folder, as an absolute path (CARGO_TARGET_DIR is relative to the repo root).
cargo_target_dir() {
    local dir="${CARGO_TARGET_DIR:-target}"
    [[ "$dir" == /* ]] || dir="$SANDBOX_REPO_ROOT/$dir"
    printf '%s\n' "${dir%/}"
}

# The run folder, as an absolute path (it need not exist yet).
sandbox_run_dir() {
    local dir="${SANDBOX_RUN_DIR:-$SANDBOX_REPO_ROOT/.run}"
    [[ "$dir" == /* ]] || dir="$PWD/$dir"
    printf '%s\n' "${dir%/}"
}

pid_file() { printf '%s/pids/%s.pid\n' "$(sandbox_run_dir)" "$1"; }
log_file() { printf '%s/logs/%s.log\n' "$(sandbox_run_dir)" "$1"; }

# True when PID is a live process (not a zombie waiting for a parent that never reaps it).
pid_alive() {
    local pid="$1" stat
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || return 1
    # Field 3 is the state; the command name before it is in parentheses and may hold spaces.
    stat="${stat##*) }"
    [[ "${stat%% *}" != Z ]]
}

# True when PID is alive and runs the program NAME (guards against pid reuse): NAME is the
# file name of its argv[0], or of argv[1] for a program run by an interpreter.
pid_is() {
    local pid="$1" name="$2" arg
    local -a argv
    pid_alive "$pid" || return 1
    mapfile -t -n 2 argv < <(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null)
    for arg in "${argv[@]}"; do
        [[ "${arg##*/}" == "$name" ]] && return 0
    done
    return 1
}

# Prints the pid of service NAME and succeeds when its pid file names a live process of ours.
service_pid() {
    local name="$1" file pid
    file="$(pid_file "$name")"
    [[ -r "$file" ]] || return 1
    pid="$(head -n 1 "$file")"
    pid_is "$pid" "$name" || return 1
    printf '%s\n' "$pid"
}

# stop_service NAME [TIMEOUT_S]: SIGTERM, then SIGKILL after TIMEOUT_S (default 10); removes
# the pid file. Succeeds when the service is not running afterwards.
stop_service() {
    local name="$1" timeout="${2:-10}" file pid deadline
    file="$(pid_file "$name")"
    if ! pid="$(service_pid "$name")"; then
        if [[ -e "$file" ]]; then
            info "$name: not running (removing stale pid file)"
            rm -f -- "$file"
        fi
        return 0
    fi
    info "$name: stopping pid $pid (SIGTERM)"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$(($(now_us) + timeout * 1000000))
    while pid_alive "$pid" && (($(now_us) < deadline)); do
        sleep 0.1
    done
    if pid_alive "$pid"; then
        warn "$name: still running after ${timeout}s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        deadline=$(($(now_us) + 5 * 1000000))
        while pid_alive "$pid" && (($(now_us) < deadline)); do
            sleep 0.1
        done
    fi
    if pid_alive "$pid"; then
        warn "$name: pid $pid survived SIGKILL; leaving its pid file"
        return 1
    fi
    rm -f -- "$file"
    info "$name: stopped"
}

sandbox_nats_host() { printf '%s\n' "${SANDBOX_NATS_HOST:-127.0.0.1}"; }
sandbox_nats_port() { printf '%s\n' "${SANDBOX_NATS_PORT:-4222}"; }

# An address to connect to for a listen address (a wildcard bind is reached on loopback).
connect_host() {
    case "$1" in
        '' | 0.0.0.0 | '::' | '[::]' | '*') printf '127.0.0.1\n' ;;
        *) printf '%s\n' "$1" ;;
    esac
}

# The URL clients use for the NATS server up.sh starts.
sandbox_nats_url() {
    printf 'nats://%s:%s\n' "$(connect_host "$(sandbox_nats_host)")" "$(sandbox_nats_port)"
}

# port_open HOST PORT: true when something accepts TCP connections there.
port_open() {
    local host="${1#[}" port="$2"
    host="${host%]}"
    # shellcheck disable=SC2016 # expanded by the inner bash
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$host" "$port" 2>/dev/null
}

# Describes who listens on PORT, when ss can tell (for error messages).
port_owner() {
    local port="$1" line
    command -v ss >/dev/null 2>&1 || return 0
    line="$(ss -Hltnp "sport = :$port" 2>/dev/null | head -n 1)" || return 0
    [[ -n "$line" ]] && printf ' (ss: %s)' "$(tr -s ' ' <<<"$line")"
    return 0
}
