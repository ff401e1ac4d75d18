#!/usr/bin/env bash
# Measures the round trip of running `print(1)` through the control plane (HTTP request to the
# recorded result, in the session's warm Python interpreter) against
# `docker exec <container> python3 -c 'print(1)'` on the same session's container, alternating
# the two in the same run (the machines are noisy, so the ratio is the figure to read).
#
# Needs the system up (ops/up.sh). Knobs:
#   SANDBOX_URL   the gateway (default http://127.0.0.1:8000)
#   RUNS          samples of each (default 30)
#   TEMPLATE      template of the session (default python-basic)
set -euo pipefail

url=${SANDBOX_URL:-http://127.0.0.1:8000}
runs=${RUNS:-30}
template=${TEMPLATE:-python-basic}

# shellcheck source=ops/bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_gateway "$url"

session=$(curl -fsS -X POST "$url/api/v1/sessions" -H 'Content-Type: application/json' \
  -d "{\"template_id\": \"$template\"}")
id=$(jq -r .id <<<"$session")
container=$(jq -r .container_id <<<"$session")
trap 'curl -fsS -X DELETE "$url/api/v1/sessions/$id" >/dev/null' EXIT

run_print() {
  curl -fsS -X POST "$url/api/v1/sessions/$id/executions" -H 'Content-Type: application/json' \
    -d '{"code": "print(1)"}'
}
# The first run starts the session's interpreter; measure the warm path.
[[ $(run_print | jq -r .stdout) == 1 ]] || { echo "print(1) did not print 1" >&2; exit 1; }

ours=() baseline=()
for ((i = 1; i <= runs; i++)); do
  start=$(now_ms)
  out=$(run_print | jq -r .stdout)
  ours+=($(( $(now_ms) - start )))
  [[ $out == 1 ]] || { echo "print(1) printed '$out'" >&2; exit 1; }

  start=$(now_ms)
  out=$(docker exec "$container" python3 -c 'print(1)')
  baseline+=($(( $(now_ms) - start )))
  [[ $out == 1 ]] || { echo "docker exec printed '$out'" >&2; exit 1; }
done

report_against_docker "print(1) round trip ($runs runs)" \
  "POST /api/v1/sessions/{id}/executions" "docker exec <c> python3 -c 'print(1)'"
