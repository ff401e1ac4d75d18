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
