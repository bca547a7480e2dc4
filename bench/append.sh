#!/usr/bin/env bash
# Event-store appends through HTTP (group commit) against Postgres's own ceiling for
# single-row INSERT transactions, measured in the same run on the same Postgres.
#   ours:     WRITERS concurrent keep-alive HTTP connections (wrk), each appending one ~200-byte
#             event at a time to a stream of its own (a new stream per request, "no_stream").
#   baseline: pgbench with WRITERS clients, each transaction one single-row INSERT of a
#             similar payload into a plain table with a bigserial key (prepared statements).
# Postgres keeps its default durability (fsync, synchronous_commit and full_page_writes on;
# checked below). The relay is off: this measures the append path. Target: ours >= 6x.
# The last line is one JSON object.
# Environment: BATON_BUILD_DIR, BENCH_DURATION (20 s per side), BENCH_WRITERS (64),
# BENCH_WARMUP (3 s).
source "$(dirname "$0")/lib.sh"
DURATION=${BENCH_DURATION:-20}
WRITERS=${BENCH_WRITERS:-64}
WARMUP=${BENCH_WARMUP:-3}
TARGET=6
THREADS=2
for c in wrk pgbench psql jq; do command -v "$c" >/dev/null || { echo "$c not found: run ./dev deps" >&2; exit 1; }; done

bench_stack_up
tmp=$BENCH_RUN
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -tA "$BATON_PG_DSN")
durability=$("${PSQL[@]}" -c "SELECT string_agg(name || '=' || setting, ' ' ORDER BY name)
  FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit', 'full_page_writes', 'wal_sync_method')")
say "postgres: $durability"
for s in fsync=on synchronous_commit=on full_page_writes=on; do
  [[ " $durability " == *" $s "* ]] || { echo "postgres does not run with $s" >&2; exit 1; }
done

# ---- ours ---------------------------------------------------------------------------------
bport=$(free_port)
start_broker "$bport" "$tmp/broker.log" BATON_KAFKA_BROKERS="$BATON_KAFKA_BROKERS" \
  BATON_PG_DSN="$BATON_PG_DSN" BATON_BROKER_RELAY=false
[[ "$(http_status "$bport" /readyz)" == 200 ]] || { cat "$tmp/broker.log" >&2; echo "broker not ready" >&2; exit 1; }
url="http://127.0.0.1:$bport"

# One wrk connection is one writer: one request in flight, a new stream and event id each time.
cat >"$tmp/append.lua" <<'EOF'
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
run_wrk() { wrk -t"$THREADS" -c"$WRITERS" -d"$2"s --latency -s "$tmp/append.lua" "$url" -- "$1" 2>&1; }
say "ours: warm-up ${WARMUP}s"
run_wrk w "$WARMUP" >"$tmp/wrk-warmup.txt"
before=$("${PSQL[@]}" -c "SELECT count(*) FROM baton.events")
m0=$(curl -s "$url/metrics")
say "ours: $WRITERS writers for ${DURATION}s"
run_wrk m "$DURATION" | tee "$tmp/wrk.txt" >&2
after=$("${PSQL[@]}" -c "SELECT count(*) FROM baton.events")
m1=$(curl -s "$url/metrics")
broker_hwm_kb=$(hwm_kb "$BROKER_PID")
kill "$BROKER_PID"
wait "$BROKER_PID" 2>/dev/null || true

# wrk: "N requests in 20.00s, ...", "Non-2xx or 3xx responses: E", latency percentiles.
reqs=$(sed -n 's/^ *\([0-9]*\) requests in .*/\1/p' "$tmp/wrk.txt")
secs=$(sed -n 's/^ *[0-9]* requests in \([0-9.]*\)s,.*/\1/p' "$tmp/wrk.txt")
non2xx=$(sed -n 's/^ *Non-2xx or 3xx responses: *\([0-9]*\).*/\1/p' "$tmp/wrk.txt")
non2xx=${non2xx:-0}
[[ -n "$reqs" && -n "$secs" ]] || { echo "cannot read wrk's summary ($tmp/wrk.txt)" >&2; exit 1; }
pct_ms() { # "50%" -> milliseconds
  awk -v p="$1" '$1 == p { v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
    f = (u == "us") ? 0.001 : (u == "s") ? 1000 : 1; printf "%.2f", v * f }' "$tmp/wrk.txt"
}
p50=$(pct_ms 50%)
p99=$(pct_ms 99%)
ours=$(awk -v r="$reqs" -v e="$non2xx" -v s="$secs" 'BEGIN { printf "%.0f", (r - e) / s }')
stored=$((after - before))
# The oracle: every append answered 201 is a row in baton.events.
[[ $stored -ge $((reqs - non2xx)) ]] || { echo "only $stored events stored for $((reqs - non2xx)) appends answered 201" >&2; exit 1; }
metric() { awk -v n="$1" '$1 == n { print $2 }' <<<"$2"; }
groups=$(awk -v a="$(metric baton_broker_append_group_size_count "$m0")" -v b="$(metric baton_broker_append_group_size_count "$m1")" 'BEGIN { print b - a }')
appends=$(awk -v a="$(metric baton_broker_append_group_size_sum "$m0")" -v b="$(metric baton_broker_append_group_size_sum "$m1")" 'BEGIN { print b - a }')
group_avg=$(awk -v a="$appends" -v g="$groups" 'BEGIN { if (g > 0) printf "%.1f", a / g; else print 0 }')
say "ours: $ours appends/s (p50 $p50 ms, p99 $p99 ms, $non2xx non-2xx, $group_avg appends per transaction)"

# ---- baseline: pgbench, one single-row INSERT per transaction -------------------------------
"${PSQL[@]}" -c "CREATE TABLE bench_insert (id bigserial PRIMARY KEY, stream text NOT NULL,
  payload text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())"
pad=$(printf 'x%.0s' $(seq 96))
printf '%s\n' "INSERT INTO bench_insert (stream, payload) VALUES ('bench-' || :client_id, '{\"n\":1,\"pad\":\"$pad\"}');" >"$tmp/insert.sql"
run_pgbench() { pgbench -n -c "$WRITERS" -j "$THREADS" -T "$1" -M prepared -f "$tmp/insert.sql" "$BATON_PG_DSN" 2>&1; }
say "baseline: pgbench warm-up ${WARMUP}s"
run_pgbench "$WARMUP" >"$tmp/pgbench-warmup.txt"
say "baseline: pgbench, $WRITERS clients for ${DURATION}s"
run_pgbench "$DURATION" | tee "$tmp/pgbench.txt" >&2
baseline=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$tmp/pgbench.txt" | head -n1)
[[ -n "$baseline" ]] || { echo "cannot read pgbench's tps ($tmp/pgbench.txt)" >&2; exit 1; }
baseline=$(awk -v b="$baseline" 'BEGIN { printf "%.0f", b }')

r=$(ratio "$ours" "$baseline")
# Stop the stack now, so that its messages come before the summary and the JSON is last.
bench_cleanup
trap - EXIT
echo "append: ours $ours appends/s vs pgbench $baseline single-row INSERT tx/s = ${r}x (target >= ${TARGET}x)"
jq -cn --argjson ours "$ours" --argjson base "$baseline" --argjson ratio "$r" \
  --argjson target "$TARGET" --argjson writers "$WRITERS" --argjson secs "$secs" \
  --argjson p50 "${p50:-null}" --argjson p99 "${p99:-null}" --argjson non2xx "$non2xx" \
  --argjson group "$group_avg" --argjson stored "$stored" --arg durability "$durability" \
  --argjson hwm "${broker_hwm_kb:-null}" --argjson cores "$(nproc)" \
  '{bench: "append", ours: $ours, baseline: $base, ratio: $ratio, target: $target,
    unit: "appends/s vs INSERT transactions/s", writers: $writers, duration_s: $secs,
    ours_p50_ms: $p50, ours_p99_ms: $p99, ours_non_2xx: $non2xx, appends_per_transaction: $group,
    events_stored: $stored, broker_peak_rss_kb: $hwm, postgres: $durability, cores: $cores}'
