#!/usr/bin/env bash
# The project's one test command (CI runs it through .ci/run):
#   1. installs missing Debian packages (ops/install-deps.sh): nats-server, PostgreSQL,
#      debootstrap, busybox-static, ...
#   2. builds the sandbox-executor:v1.0 image (ops/images/build.sh, cached);
#      the tests build their own sandbox-test-busybox:1 image
#   3. cargo test --workspace --all-targets --all-features   (needs nats-server, Docker,
#      PostgreSQL, the images; --all-features for the node daemon's simulated fleet)
#   4. cargo test -p node-daemon --lib --test binary   (the default build, without the simulated
#      fleet: its refusal of --simulate-nodes)
#   5. cargo fmt --all -- --check
#   6. cargo clippy --workspace --all-targets --all-features -- -D warnings
# Steps 3-6 all run even when one fails, so one run shows every problem. Prints the time of each
# step and a summary; exits non-zero when any step failed. cargo's own output is shown as is.
#
# Usage: ops/test.sh [ARGS...]   ARGS go to cargo test, e.g. ops/test.sh -- --test-threads=1
# Env:   the knobs of install-deps.sh and images/build.sh; CARGO_* as usual.
set -euo pipefail
# shellcheck source=ops/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

total_start="$(now_us)"
summary=()
failed=()

# step LABEL COMMAND...: runs a step, records its outcome for the summary.
step() {
    local label="$1"
    shift
    if run_step "$label" "$@"; then
        summary+=("ok      $SANDBOX_STEP_ELAPSED  $label")
    else
        summary+=("FAILED  $SANDBOX_STEP_ELAPSED  $label")
        failed+=("$label")
        return 1
    fi
}

print_summary() {
    local line
    info "summary:"
    for line in "${summary[@]}"; do
        info "  $line"
    done
    info "total $(elapsed_since "$total_start")"
}

require_cmd cargo "install the Rust toolchain (rustup)"
cargo fmt --version >/dev/null 2>&1 || die "rustfmt is missing: rustup component add rustfmt"
cargo clippy --version >/dev/null 2>&1 || die "clippy is missing: rustup component add clippy"

if ! step "install missing packages" bash "$SANDBOX_OPS_DIR/install-deps.sh" ||
    ! step "docker engine reachable" require_docker ||
    ! step "executor image" bash "$SANDBOX_OPS_DIR/images/build.sh"; then
    print_summary
    die "preparation failed: ${failed[*]}"
fi

cd "$SANDBOX_REPO_ROOT"
step "cargo test --workspace --all-targets --all-features" \
    cargo test --workspace --all-targets --all-features "$@" || true
step "cargo test -p node-daemon --lib --test binary (default features)" \
    cargo test -p node-daemon --lib --test binary || true
step "cargo fmt --all -- --check" cargo fmt --all -- --check || true
step "cargo clippy --workspace --all-targets --all-features -- -D warnings" \
    cargo clippy --workspace --all-targets --all-features -- -D warnings || true

print_summary
if ((${#failed[@]} > 0)); then
    die "failed: ${failed[*]}"
fi
info "all checks passed"
