#!/usr/bin/env bash
# Prints the control plane's NATS messages as JSON lines, payloads decoded from MessagePack:
#   ops/watch.sh                       everything under runtime.>
#   ops/watch.sh runtime.heartbeat     one subject (NATS wildcards * and > work)
#   ops/watch.sh --pretty 'runtime.containers.*' sessions.create
# Runs the sandbox-watch binary, building the workspace binaries first as ops/up.sh does (quietly;
# a no-op after up.sh, thanks to cargo's own up-to-date check)
# when cargo is available; all arguments go to sandbox-watch (--help lists them). Ctrl-C stops.
#
# Env:
#   NATS_URL          server to watch (default nats://127.0.0.1:4222, or the
#                     SANDBOX_NATS_HOST/SANDBOX_NATS_PORT that up.sh uses)
#   CARGO_TARGET_DIR  cargo's target folder (default <repo>/target)
set -euo pipefail
# shellcheck source=ops/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NATS_URL="${NATS_URL:-$(sandbox_nats_url)}"
export NATS_URL
binary="$(cargo_target_dir)/release/sandbox-watch"

if command -v cargo >/dev/null 2>&1; then
    if [[ ! -x "$binary" ]]; then
        info "building sandbox-watch (the first build takes a few minutes)"
    fi
    build_log="$(mktemp)"
    trap 'rm -f -- "$build_log"' EXIT
    if ! (cd "$SANDBOX_REPO_ROOT" && cargo build --release --quiet --bins) \
        >"$build_log" 2>&1; then
        cat "$build_log" >&2
        die "building sandbox-watch failed (output above)"
    fi
    rm -f -- "$build_log"
    trap - EXIT
elif [[ ! -x "$binary" ]]; then
    die "$binary is missing and cargo is not installed to build it"
fi

exec "$binary" "$@"
