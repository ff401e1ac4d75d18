#!/usr/bin/env bash
# Measures how long a sandbox takes to start through the control plane, against a plain
# `docker run -d` of the same image with the same limits, in the same run (the machines are
# noisy, so the ratio is the figure to read).
#
# Needs the system up (ops/up.sh). Knobs:
#   SANDBOX_URL   the gateway (default http://127.0.0.1:8000)
#   RUNS          samples of each (default 20)
#   TEMPLATE      template to start (default python-basic)
set -euo pipefail

url=${SANDBOX_URL:-http://127.0.0.1:8000}
runs=${RUNS:-20}
template=${TEMPLATE:-python-basic}
image=sandbox-executor:v1.0

# shellcheck source=ops/bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_gateway "$url"

ours=() baseline=()

for ((i = 1; i <= runs; i++)); do
  # Through the control plane: HTTP request to a running container with its id recorded.
  start=$(now_ms)
  body=$(curl -fsS -X POST "$url/api/v1/sessions" -H 'Content-Type: application/json' \
    -d "{\"template_id\": \"$template\"}")
  ours+=($(( $(now_ms) - start )))
  id=$(jq -r .id <<<"$body")
  curl -fsS -X DELETE "$url/api/v1/sessions/$id" >/dev/null

  # Plain Docker, the same isolation settings the node daemon applies.
  start=$(now_ms)
  cid=$(docker run -d --init --network none --cap-drop ALL --security-opt no-new-privileges \
    --memory 512m --memory-swap 512m --cpus 1 --pids-limit 256 "$image")
  baseline+=($(( $(now_ms) - start )))
  docker rm -f "$cid" >/dev/null
done

report_against_docker "start of a sandbox ($runs runs)" \
  "POST /api/v1/sessions (running)" "docker run -d (same image, limits)"
