#!/usr/bin/env bash
# bench/append.sh: event-store appends through HTTP (group commit) against Postgres's own
# per-transaction ceiling, measured in the same run on the same Postgres.
#
#   ours:     WRITERS concurrent HTTP connections (wrk), each appending one event at a time to a
#             stream of its own (a fresh stream per request, expected_version "no_stream").
#   baseline: pgbench with WRITERS clients, each transaction one single-row INSERT of a similar
#             payload into a plain table with a bigserial key.
#
# The bench starts its own stack in a temporary run dir with Postgres's DEFAULT durability
# (fsync=on, synchronous_commit=on, full_page_writes=on: BATON_DEV_FAST_PG=0) and checks it.
# It prints both rates and their ratio; the last line is one JSON object.
#
# Environment: BATON_BUILD_DIR (default build; run ./dev build first), BENCH_DURATION (20 s per
# side), BENCH_WRITERS (64), BENCH_WARMUP (3 s), BENCH_KEEP=1 keeps the run dir.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$ROOT"
abspath() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$ROOT/$1" ;; esac; }
BUILD=$(abspath "${BATON_BUILD_DIR:-build}")
DURATION=${BENCH_DURATION:-20}
WRITERS=${BENCH_WRITERS:-64}
WARMUP=${BENCH_WARMUP:-3}
TARGET=6
BROKER="$BUILD/broker/baton-broker"

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'append.sh: error: %s\n' "$*" >&2; exit 1; }

for c in wrk pgbench psql curl jq; do command -v "$c" >/dev/null || die "$c not found: run ./dev deps"; done
[[ -x "$BROKER" ]] || die "$BROKER is missing: run ./dev build (or set BATON_BUILD_DIR)"

RUN=$(mktemp -d /tmp/baton-bench-append.XXXXXX)
BROKER_PID=
cleanup() {
  local rc=$?
  if [[ -n "$BROKER_PID" ]] && kill -0 "$BROKER_PID" 2>/dev/null; then
    kill "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
  fi
  BATON_DEV_RUN_DIR="$RUN" BATON_BUILD_DIR="$BUILD" "$ROOT/dev" stack-down >/dev/null 2>&1 || true
  if [[ "${BENCH_KEEP:-0}" == 1 || $rc -ne 0 ]]; then
    say "run dir kept: $RUN"
  else
    rm -rf "$RUN"
  fi
}
trap cleanup EXIT

# ---- the stack, with default durability ----------------------------------------------------
say "starting a stack in $RUN (Postgres with default durability)"
BATON_DEV_RUN_DIR="$RUN" BATON_DEV_AUTO_PORTS=1 BATON_DEV_FAST_PG=0 BATON_DEV_PG_FRESH=1 \
  BATON_BUILD_DIR="$BUILD" BATON_DEV_KAFKA_TOPICS=events:1 "$ROOT/dev" stack-up >"$RUN/stack-up.log" 2>&1 ||
  { tail -n 20 "$RUN/stack-up.log" >&2; die "stack-up failed"; }
DSN=$(sed -n 's/^BATON_PG_DSN=//p' "$RUN/env")
KAFKA=$(sed -n 's/^BATON_KAFKA_BROKERS=//p' "$RUN/env")
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -tA "$DSN")
DURABILITY=$("${PSQL[@]}" -c "SELECT string_agg(name || '=' || setting, ' ' ORDER BY name) FROM pg_settings
  WHERE name IN ('fsync', 'synchronous_commit', 'full_page_writes', 'wal_sync_method')")
say "postgres: $DURABILITY"
for s in fsync=on synchronous_commit=on full_page_writes=on; do
  [[ " $DURABILITY " == *" $s "* ]] || die "postgres does not run with $s"
done

# ---- ours: HTTP appends through the broker --------------------------------------------------
# Relay off: this measures the append path alone. Port 0: the broker logs the port it got.
BATON_HTTP_PORT=0 BATON_PG_DSN="$DSN" BATON_KAFKA_BROKERS="$KAFKA" BATON_BROKER_RELAY=false \
  "$BROKER" >"$RUN/broker.log" 2>&1 &
BROKER_PID=$!
PORT=
for _ in $(seq 100); do
  PORT=$(grep -o '"msg":"listening"[^}]*"port":[0-9]*' "$RUN/broker.log" | grep -o '[0-9]*$' || true)
  [[ -n "$PORT" && "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/readyz")" == 200 ]] && break
  PORT=
  sleep 0.1
done
[[ -n "$PORT" ]] || { tail -n 20 "$RUN/broker.log" >&2; die "the broker did not become ready"; }
URL="http://127.0.0.1:$PORT"

# Each wrk connection is one writer: one request in flight, a new stream and event id each
# time. A ~200-byte event, like the other benches.
cat >"$RUN/append.lua" <<'EOF'
local nthreads = 0
function setup(thread)
  nthreads = nthreads + 1
  thread:set("tid", nthreads)
end
function init(args)
  run = args[1]
  n = 0
  headers = { ["Content-Type"] = "application/json" }
  pad = string.rep("x", 96)
end
function request()
  n = n + 1
  local s = string.format("bench-%s-%d-%d", run, tid, n)
  local body = string.format('{"expected_version":"no_stream","events":[{"specversion":"1.0",' ..
    '"id":"%s","source":"/bench/append","type":"bench.appended","data":{"n":%d,"pad":"%s"}}]}',
    s, n, pad)
  return wrk.format("POST", "/v1/streams/" .. s .. "/events", headers, body)
end
EOF

THREADS=2
run_wrk() { # tag duration
  wrk -t"$THREADS" -c"$WRITERS" -d"$2"s --latency -s "$RUN/append.lua" "$URL" -- "$1" 2>&1
}
say "ours: warm-up ${WARMUP}s"
run_wrk w "$WARMUP" >"$RUN/wrk-warmup.txt"
BEFORE=$("${PSQL[@]}" -c "SELECT count(*) FROM baton.events")
say "ours: $WRITERS writers for ${DURATION}s"
run_wrk m "$DURATION" | tee "$RUN/wrk.txt" >&2
AFTER=$("${PSQL[@]}" -c "SELECT count(*) FROM baton.events")
METRICS=$(curl -s "$URL/metrics")
kill "$BROKER_PID"; wait "$BROKER_PID" 2>/dev/null || true; BROKER_PID=

# wrk prints "N requests in 20.00s, ...", "Non-2xx or 3xx responses: E" and percentiles.
REQS=$(sed -n 's/^ *\([0-9]*\) requests in .*/\1/p' "$RUN/wrk.txt")
SECS=$(sed -n 's/^ *[0-9]* requests in \([0-9.]*\)s,.*/\1/p' "$RUN/wrk.txt")
NON2XX=$(sed -n 's/^ *Non-2xx or 3xx responses: *\([0-9]*\).*/\1/p' "$RUN/wrk.txt")
ERRS=$(sed -n 's/^ *Socket errors: *\(.*\)/\1/p' "$RUN/wrk.txt")
[[ -n "$REQS" && -n "$SECS" ]] || die "cannot read wrk's summary (see $RUN/wrk.txt)"
NON2XX=${NON2XX:-0}
pct_ms() { # "50%" -> milliseconds
  awk -v p="$1" '$1 == p { v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
    f = (u == "us") ? 0.001 : (u == "s") ? 1000 : 1; printf "%.2f", v * f }' "$RUN/wrk.txt"
}
P50=$(pct_ms 50%)
P99=$(pct_ms 99%)
OURS=$(awk -v r="$REQS" -v e="$NON2XX" -v s="$SECS" 'BEGIN { printf "%.0f", (r - e) / s }')
STORED=$((AFTER - BEFORE))
GROUP_AVG=$(awk '/^baton_broker_append_group_size_sum/ { s = $2 } /^baton_broker_append_group_size_count/ { c = $2 }
  END { if (c > 0) printf "%.1f", s / c; else print 0 }' <<<"$METRICS")
# The oracle: every append answered 201 is a row in baton.events.
OK=$((REQS - NON2XX))
[[ $STORED -ge $OK ]] || die "only $STORED events stored for $OK appends answered 201"
say "ours: $OURS appends/s (p50 ${P50} ms, p99 ${P99} ms, $NON2XX non-2xx, average group $GROUP_AVG appends)"

# ---- baseline: pgbench, one single-row INSERT per transaction -------------------------------
"${PSQL[@]}" -c "CREATE TABLE bench_insert (id bigserial PRIMARY KEY, stream text NOT NULL,
  payload text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())"
PAD=$(printf 'x%.0s' $(seq 96))
printf '%s\n' "INSERT INTO bench_insert (stream, payload) VALUES ('bench-' || :client_id, '{\"n\":1,\"pad\":\"$PAD\"}');" >"$RUN/insert.sql"
run_pgbench() { # duration
  pgbench -n -c "$WRITERS" -j "$THREADS" -T "$1" -M prepared -f "$RUN/insert.sql" "$DSN" 2>&1
}
say "baseline: pgbench warm-up ${WARMUP}s"
run_pgbench "$WARMUP" >"$RUN/pgbench-warmup.txt"
say "baseline: pgbench, $WRITERS clients for ${DURATION}s"
run_pgbench "$DURATION" | tee "$RUN/pgbench.txt" >&2
BASE=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$RUN/pgbench.txt" | head -n1)
[[ -n "$BASE" ]] || die "cannot read pgbench's tps (see $RUN/pgbench.txt)"
BASE=$(awk -v b="$BASE" 'BEGIN { printf "%.0f", b }')

RATIO=$(awk -v o="$OURS" -v b="$BASE" 'BEGIN { printf "%.2f", o / b }')
echo "append: ours $OURS appends/s vs pgbench $BASE single-row INSERT tx/s: ratio $RATIO (target >= $TARGET)"
jq -cn --argjson ours "$OURS" --argjson base "$BASE" --argjson ratio "$RATIO" \
  --argjson target "$TARGET" --argjson writers "$WRITERS" --argjson secs "$SECS" \
  --argjson p50 "${P50:-null}" --argjson p99 "${P99:-null}" --argjson non2xx "$NON2XX" \
  --argjson group "$GROUP_AVG" --argjson stored "$STORED" --arg durability "$DURABILITY" \
  --arg sockerr "${ERRS:-}" --argjson cores "$(nproc)" \
  '{bench: "append", ours: $ours, baseline: $base, ratio: $ratio, target: $target,
    unit: "appends/s vs INSERT transactions/s", writers: $writers, duration_s: $secs,
    ours_p50_ms: $p50, ours_p99_ms: $p99, ours_non_2xx: $non2xx, ours_socket_errors: $sockerr,
    avg_group_size: $group, events_stored: $stored, postgres: $durability, cores: $cores}'
