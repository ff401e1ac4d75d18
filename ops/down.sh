#!/usr/bin/env bash
# Stops what ops/up.sh started, from its pid files, in reverse start order (api-gateway,
# node-daemon, scheduler-worker, nats-server): SIGTERM, then SIGKILL after a grace period.
# Only processes whose pid file names a live process running that very program are signalled;
# stale pid files are removed.
#
# Usage: ops/down.sh [--purge]
#   --purge  also remove every sandbox container on this Docker engine
#            (label io.sandbox.managed-by=sandbox-node-daemon), the sandbox_network bridge
#            when nothing else uses it, and the run folder (logs, database, NATS store)
# Env:
#   SANDBOX_RUN_DIR       run folder (default <repo>/.run)
#   SANDBOX_STOP_TIMEOUT  seconds between SIGTERM and SIGKILL (default 10)
set -euo pipefail
# shellcheck source=ops/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

purge=false
for arg in "$@"; do
    case "$arg" in
        --purge) purge=true ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
            exit 0
            ;;
        *) die "unknown argument '$arg' (usage: ops/down.sh [--purge])" ;;
    esac
done

RUN_DIR="$(sandbox_run_dir)"
STOP_TIMEOUT="${SANDBOX_STOP_TIMEOUT:-10}"
[[ "$STOP_TIMEOUT" =~ ^[0-9]+$ ]] || die "SANDBOX_STOP_TIMEOUT must be a number of seconds"

# With --purge the run folder goes: refuse anything that does not look like one, before
# touching anything.
if $purge && [[ -e "$RUN_DIR" ]]; then
    if [[ "$RUN_DIR" == / || "$RUN_DIR" == "$SANDBOX_REPO_ROOT" || "$RUN_DIR" == "${HOME:-/}" ]] ||
        ! [[ "$(basename -- "$RUN_DIR")" == .run || -d "$RUN_DIR/pids" || -d "$RUN_DIR/logs" ]]; then
        die "$RUN_DIR does not look like a run folder (no pids/ or logs/); not purging it"
    fi
fi

failed=()
if [[ -d "$RUN_DIR/pids" ]]; then
    for ((index = ${#SANDBOX_SERVICES[@]} - 1; index >= 0; index--)); do
        stop_service "${SANDBOX_SERVICES[index]}" "$STOP_TIMEOUT" || failed+=("${SANDBOX_SERVICES[index]}")
    done
else
    info "nothing to stop ($RUN_DIR/pids does not exist)"
fi
if ((${#failed[@]} > 0)); then
    die "could not stop: ${failed[*]}"
fi

if $purge; then
    if command -v docker >/dev/null 2>&1; then
        listing="$(docker ps -aq --filter "label=$SANDBOX_MANAGED_LABEL")" ||
            die "cannot list sandbox containers (is the Docker engine running?)"
        mapfile -t containers <<<"$listing"
        [[ -n "$listing" ]] || containers=()
        if ((${#containers[@]} > 0)); then
            info "removing ${#containers[@]} sandbox container(s)"
            docker rm -f "${containers[@]}" >/dev/null
        fi
        # The node daemon makes the bridge and never removes it; a container of someone
        # else's still on it keeps it (docker refuses), which is what we want.
        network="${NODE_DAEMON_NETWORK:-sandbox_network}"
        if docker network inspect "$network" >/dev/null 2>&1; then
            if docker network rm "$network" >/dev/null 2>&1; then
                info "removed the $network network"
            else
                warn "kept the $network network: something else still uses it"
            fi
        fi
    else
        warn "docker is not installed; no containers to remove"
    fi
    if [[ -e "$RUN_DIR" ]]; then
        rm -rf -- "$RUN_DIR"
        info "removed $RUN_DIR"
    fi
fi
info "down"
