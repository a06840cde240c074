#!/usr/bin/env bash
# Inventory benchmark: ferry serve on a temporary data directory with
# 10,000 VMs (10 fake sites of 1,000), then GET /api/v1/vms timed with
# curl RUNS times (default 50). Prints p50, p95 and max in milliseconds and
# the response size. The target is p95 under 100 ms.
#
#   bench/inventory.sh [SITES] [VMS_PER_SITE]
#
# FERRY=path uses that binary instead of building bin/ferry.
source "$(dirname "$0")/../scripts/lib.sh"
ensure_go
ensure_pkgs curl:curl
if [ -z "${FERRY:-}" ]; then
	build_ferry
	FERRY=$FERRY_ROOT/bin/ferry
fi
SITES=${1:-10}
PER=${2:-1000}
RUNS=${RUNS:-50}
WORK=$(mktemp -d)
SERVE_PID=
cleanup() {
	[ -n "$SERVE_PID" ] && kill "$SERVE_PID" 2>/dev/null && wait "$SERVE_PID" 2>/dev/null
	rm -rf "$WORK"
}
trap cleanup EXIT

log "starting ferry serve in $WORK"
FERRY_SECRET_KEY= "$FERRY" serve --listen 127.0.0.1:0 --data "$WORK/data" --refresh 24h >"$WORK/serve.out" 2>"$WORK/serve.err" &
SERVE_PID=$!
for _ in $(seq 300); do
	grep -q 'serving http' "$WORK/serve.out" 2>/dev/null && break
	kill -0 "$SERVE_PID" 2>/dev/null || { cat "$WORK/serve.err" >&2; exit 1; }
	sleep 0.1
done
URL=$(sed -n 's/.*serving \(http[^ ]*\).*/\1/p' "$WORK/serve.out")
TOKEN=$(sed -n 's/.*(shown only now): \(ferry_[0-9a-f]*\).*/\1/p' "$WORK/serve.out")
[ -n "$URL" ] && [ -n "$TOKEN" ] || { echo "serve did not start:" >&2; cat "$WORK/serve.out" "$WORK/serve.err" >&2; exit 1; }
export FERRY_SERVER=$URL FERRY_TOKEN=$TOKEN

log "loading $((SITES * PER)) VMs ($SITES fake sites of $PER)"
for i in $(seq 0 $((SITES - 1))); do
	region=""
	[ $((i % 2)) = 1 ] && region="&region=us-east-1"
	"$FERRY" site add "site$i" --kind fake --url "fake://site$i?vms=$PER&seed=$i$region" >/dev/null
	"$FERRY" site refresh "site$i" >/dev/null
done
COUNT=$(curl -sf -H "Authorization: Bearer $TOKEN" "$URL/api/v1/vms" | grep -o '"power_state"' | wc -l)
log "served $COUNT VMs; timing $RUNS requests"

times=()
for _ in $(seq "$RUNS"); do
	t=$(curl -sf -o /dev/null -w '%{time_total} %{size_download}' -H "Authorization: Bearer $TOKEN" "$URL/api/v1/vms")
	times+=("${t% *}")
	size=${t#* }
done
printf '%s\n' "${times[@]}" | sort -n | awk -v n="$RUNS" -v size="$size" -v count="$COUNT" '
	{ v[NR] = $1 * 1000 }
	END {
		p50 = v[int((n - 1) * 0.50) + 1]; p95 = v[int((n - 1) * 0.95) + 1]
		printf "GET /api/v1/vms: %d VMs, %.1f MB, %d runs: p50 %.1f ms, p95 %.1f ms, max %.1f ms\n", count, size / 1e6, n, p50, p95, v[n]
	}'
