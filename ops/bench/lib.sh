# Shared by the benchmark scripts: sourced, not run.

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# percentile P values...: the P-th percentile (nearest rank) of the values.
percentile() {
  local p=$1; shift
  printf '%s\n' "$@" | sort -n | awk -v p="$p" '{v[NR]=$1} END {i=int((NR*p+99)/100); if (i<1) i=1; print v[i]}'
}

# require_gateway URL: the tools are there and the system is up.
require_gateway() {
  local tool
  for tool in curl jq docker; do
    command -v "$tool" >/dev/null || { echo "needs $tool (run ops/install-deps.sh)" >&2; exit 1; }
  done
  curl -fsS "$1/healthz" >/dev/null || { echo "no gateway at $1: run ops/up.sh first" >&2; exit 1; }
}

# report_against_docker TITLE OURS_LABEL DOCKER_LABEL: prints the p50, p95 and max of the arrays
# `ours` and `baseline` (milliseconds, set by the caller) and the ratio of their p50s.
report_against_docker() {
  local title=$1 ours_label=$2 docker_label=$3 width=$(( ${#2} > ${#3} ? ${#2} : ${#3} ))
  local ours_p50 base_p50
  ours_p50=$(percentile 50 "${ours[@]}"); base_p50=$(percentile 50 "${baseline[@]}")
  printf "%-${width}s %8s %8s %8s\n" "$title" p50_ms p95_ms max_ms
  printf "%-${width}s %8s %8s %8s\n" "$ours_label" "$ours_p50" \
    "$(percentile 95 "${ours[@]}")" "$(percentile 100 "${ours[@]}")"
  printf "%-${width}s %8s %8s %8s\n" "$docker_label" "$base_p50" \
    "$(percentile 95 "${baseline[@]}")" "$(percentile 100 "${baseline[@]}")"
  awk -v a="$ours_p50" -v b="$base_p50" 'BEGIN {printf "ratio of p50s (ours / docker): %.2f\n", a / b}'
}
