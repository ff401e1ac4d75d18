#!/usr/bin/env bash
# The benchmark of the control plane: installs what is missing (ops/install-deps.sh), builds the
# executor image (ops/images/build.sh) and the release binaries, then runs
# target/release/sandbox-bench, which starts its own nats-server, scheduler replicas, gateway,
# simulated fleet and real node daemon on free ports and temp dirs, measures, stops all of it,
# removes the containers it made, and prints one table (also written as JSON).
#
# Usage: ops/bench/run.sh [sandbox-bench flags]     (ops/bench/run.sh --help lists them)
#   e.g. ops/bench/run.sh --placements 1000 --docker-runs 10 --json /tmp/bench.json
# Env:
#   CARGO_TARGET_DIR      cargo's target folder (default <repo>/target)
#   SANDBOX_SKIP_PREPARE  1 = skip installing, the image and the build
set -euo pipefail
# shellcheck source=ops/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

BIN_DIR="$(cargo_target_dir)/release"
if [[ "${SANDBOX_SKIP_PREPARE:-0}" != 1 ]]; then
    prepare_release
fi
require_cmd nats-server "run $SANDBOX_OPS_DIR/install-deps.sh"
cd "$SANDBOX_REPO_ROOT"
exec "$BIN_DIR/sandbox-bench" --bin-dir "$BIN_DIR" "$@"
