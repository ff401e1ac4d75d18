#!/usr/bin/env bash
# Installs, from Debian's packages, the programs the control plane and its tests need and that
# this machine lacks: nats-server, PostgreSQL's server (tests start private clusters with its
# initdb), debootstrap and busybox-static (image builds), curl, jq, sqlite3, ca-certificates, a
# C compiler for crates that build C, gVisor's runsc, iptables (the egress rules) and e2fsprogs
# (the sandboxes' disks). Only missing packages are installed and `apt-get update`
# runs at most once, only when something is missing; with everything present it takes well
# under a second and needs no root.
#
# When it installs PostgreSQL it stops the distribution's default cluster, so nothing is left
# holding port 5432 (the project never uses that cluster); likewise the nats-server service the
# Debian package starts on 4222 (without JetStream) is disabled.
#
# Docker is not installed here: the engine must already run (apt-get install docker.io). gVisor
# is registered with it as two runtimes, `sandbox-gvisor` (runsc --network=none, for sandboxes
# without a network) and `sandbox-gvisor-net` (runsc --network=host, the container's own network
# namespace through the host's stack, for sandboxes on sandbox_network), both on the ptrace
# platform (no KVM needed), in /etc/docker/daemon.json; the engine reloads them on SIGHUP, so
# no container stops.
#
# Usage: ops/install-deps.sh
# Env:   none besides the usual apt ones; runs apt with DEBIAN_FRONTEND=noninteractive.
set -euo pipefail
# shellcheck source=ops/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# package:command pairs; the command (if given) must be on PATH as well.
REQUIRED=(
    nats-server:nats-server
    postgresql:
    debootstrap:debootstrap
    busybox-static:
    curl:curl
    jq:jq
    sqlite3:sqlite3
    ca-certificates:
    runsc:runsc
    iptables:iptables
    e2fsprogs:mkfs.ext4
)

postgres_installed() {
    package_installed postgresql && compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}

missing=()
for entry in "${REQUIRED[@]}"; do
    package="${entry%%:*}" cmd="${entry#*:}"
    if [[ "$package" == postgresql ]]; then
        postgres_installed || missing+=("$package")
    elif ! package_installed "$package" || { [[ -n "$cmd" ]] && ! command -v "$cmd" >/dev/null 2>&1; }; then
        missing+=("$package")
    fi
done
# busybox-static owns /bin/busybox; the test image copies that very file.
if [[ ! -x /bin/busybox ]] && [[ " ${missing[*]} " != *" busybox-static "* ]]; then
    missing+=(busybox-static)
fi
if ! command -v cc >/dev/null 2>&1; then
    missing+=(gcc libc6-dev)
fi

if ((${#missing[@]} == 0)); then
    info "all dependencies present"
else
    require_root "installing ${missing[*]}"
    require_cmd apt-get "this script supports Debian (bookworm) only"
    export DEBIAN_FRONTEND=noninteractive
    new_postgres=false
    [[ " ${missing[*]} " == *" postgresql "* ]] && new_postgres=true
    new_nats=false
    [[ " ${missing[*]} " == *" nats-server "* ]] && new_nats=true

    run_step "apt-get update" apt-get update -q ||
        die "apt-get update failed: check /etc/apt/sources.list.d and the network to the Debian mirror"
    run_step "apt-get install ${missing[*]}" \
        apt-get install -y -q -o Dpkg::Use-Pty=0 --no-install-recommends "${missing[@]}" </dev/null ||
        die "apt-get install ${missing[*]} failed (see above)"

    if $new_nats && [[ -d /run/systemd/system ]]; then
        # The package starts its own server on 4222 without JetStream; ops/up.sh runs one with
        # JetStream and its own store, and tests start private ones.
        info "disabling the nats-server service the package started"
        systemctl disable --now nats-server.service >/dev/null 2>&1 || warn "could not stop nats-server.service"
    fi
    if $new_postgres; then
        # The package may have started its default cluster; the project starts its own.
        if [[ -d /run/systemd/system ]]; then
            systemctl disable --now postgresql.service >/dev/null 2>&1 || true
        fi
        if command -v pg_lsclusters >/dev/null 2>&1; then
            while read -r version cluster _port status _; do
                if [[ "$status" == online* ]]; then
                    info "stopping PostgreSQL's default cluster $version/$cluster"
                    pg_ctlcluster "$version" "$cluster" stop || warn "could not stop $version/$cluster"
                fi
            done < <(pg_lsclusters --no-header 2>/dev/null || true)
        fi
    fi
fi

if ! command -v docker >/dev/null 2>&1; then
    warn "docker is not installed; the services and tests need a running Docker engine (apt-get install docker.io)"
fi

# register_gvisor: adds the two gVisor runtimes to the engine's configuration unless it has them,
# and makes the engine reload it.
register_gvisor() {
    local config=/etc/docker/daemon.json runsc
    runsc="$(command -v runsc)" || die "runsc is not on PATH after installing it"
    if docker info --format '{{json .Runtimes}}' 2>/dev/null | jq -e 'has("sandbox-gvisor") and has("sandbox-gvisor-net")' >/dev/null; then
        info "gVisor runtimes registered with the Docker engine"
        return 0
    fi
    require_root "registering gVisor's runtimes with the Docker engine"
    local current='{}'
    [[ -s "$config" ]] && current="$(cat "$config")"
    local updated
    updated="$(jq --arg runsc "$runsc" '.runtimes["sandbox-gvisor"] = {path: $runsc, runtimeArgs: ["--platform=ptrace", "--network=none"]}
        | .runtimes["sandbox-gvisor-net"] = {path: $runsc, runtimeArgs: ["--platform=ptrace", "--network=host"]}' <<<"$current")" ||
        die "$config is not valid JSON; fix it, then run this again"
    mkdir -p "$(dirname "$config")"
    printf '%s\n' "$updated" >"$config.tmp" && mv "$config.tmp" "$config"
    local dockerd
    dockerd="$(pidof dockerd || true)"
    [[ -n "$dockerd" ]] || die "dockerd is not running: start the Docker engine, then run this again"
    info "registering gVisor with the Docker engine ($config), reloading it (SIGHUP)"
    kill -HUP $dockerd
    local tries
    for tries in $(seq 1 50); do
        if docker info --format '{{json .Runtimes}}' 2>/dev/null | jq -e 'has("sandbox-gvisor-net")' >/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    die "the Docker engine did not load the gVisor runtimes from $config"
}

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    register_gvisor
fi
