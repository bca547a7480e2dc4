#!/usr/bin/env bash
# Read API of baton-projector (issue 9 §6), served from Redis.
#  - Data set: the invoices read model of INVOICES invoices over CUSTOMERS customers, loaded
#    into Redis per the storage layout by bench/read_fill.c (redis-cli --pipe), so the figure
#    is the read path alone.
#  - Ours: wrk (bench/read.lua, bearer token on) on GET /v1/projections/invoices?index=
#    unpaid_by_due&value=<random customer> (a customer's unpaid invoices, ~INVOICES/CUSTOMERS*2/3
#    documents) and on GET /v1/projections/invoices/<random invoice>, CONNS connections each.
#  - Baseline: redis-benchmark GET of VALUE_BYTES values at the same concurrency and thread
#    count, on the same Redis.
#  - Targets: >= 50,000 req/s, p99 < 2 ms, ratio >= 0.5 (ours / redis-benchmark GET).
# The last line is one JSON object with the figures.
source "$(dirname "$0")/lib.sh"
DURATION=${BENCH_DURATION:-8s}
CONNS=${BENCH_CONNS:-64}
THREADS=${BENCH_THREADS:-2}
INVOICES=${BENCH_INVOICES:-200000}
CUSTOMERS=${BENCH_CUSTOMERS:-10000}
TOKEN=bench-read-token
for c in wrk redis-cli redis-benchmark jq cc curl; do command -v "$c" >/dev/null || { echo "$c not found: run ./dev deps" >&2; exit 1; }; done
[[ -x "$BUILD/projector/baton-projector" ]] || (cd "$ROOT" && ./dev build >&2)

bench_stack_up
tmp=$BENCH_RUN
rport=$BATON_DEV_REDIS_PORT

say "loading $INVOICES invoices of $CUSTOMERS customers into Redis (storage layout v1)"
cc -O2 -o "$tmp/read_fill" "$ROOT/bench/read_fill.c"
"$tmp/read_fill" "$INVOICES" "$CUSTOMERS" | redis-cli -p "$rport" --pipe >"$tmp/fill.log"
grep -q 'errors: 0' "$tmp/fill.log" || { cat "$tmp/fill.log" >&2; exit 1; }
value_bytes=$(redis-cli -p "$rport" STRLEN 'bt:proj:{invoices}:v1:doc:inv-0000000001')

mkdir -p "$tmp/defs"
cp "$ROOT/examples/projections/invoices.yaml" "$tmp/defs/"
pport=$(free_port)
env BATON_HTTP_PORT="$pport" BATON_PROJECTIONS="$tmp/defs" BATON_PG_DSN="$BATON_PG_DSN" \
  BATON_REDIS_URL="$BATON_REDIS_URL" BATON_KAFKA_BROKERS="$BATON_KAFKA_BROKERS" \
  BATON_API_TOKENS="$TOKEN" BATON_LOG_LEVEL=warn "$BUILD/projector/baton-projector" \
  >"$tmp/projector.log" 2>&1 &
PROJ_PID=$!
BENCH_PIDS+=("$PROJ_PID")
for _ in $(seq 1 300); do [[ "$(http_status "$pport" /readyz 2>/dev/null)" == 200 ]] && break; sleep 0.05; done
[[ "$(http_status "$pport" /readyz)" == 200 ]] || { cat "$tmp/projector.log" >&2; echo "projector not ready" >&2; exit 1; }

# The answers are the data set's: customer 1's unpaid invoices (i % CUSTOMERS == 0, i % 3 != 0)
# and invoice 1's document.
base="http://127.0.0.1:$pport/v1/projections/invoices"
auth=(-H "Authorization: Bearer $TOKEN")
want=$(awk -v n="$INVOICES" -v c="$CUSTOMERS" 'BEGIN { k = 0; for (i = c; i <= n; i += c) if (i % 3) k++; print (k > 1000 ? 1000 : k) }')
got=$(curl -sf "${auth[@]}" "$base?index=unpaid_by_due&value=cust-000001&limit=1000" | jq '.count')
[[ "$got" == "$want" ]] || { echo "index answer has $got documents, the data set $want" >&2; exit 1; }
got=$(curl -sf "${auth[@]}" "$base/inv-0000000001" | jq -r '.doc.customer_id')
[[ "$got" == cust-000002 ]] || { echo "document answer: $got" >&2; exit 1; }
say "checked: customer 1 has $want unpaid invoices; invoice 1's document is customer 2's"

# run_ours MODE: one wrk run; prints its figures as one JSON object.
run_ours() {
  local out
  out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s "$ROOT/bench/read.lua" "$base" \
    -- "$1" "$INVOICES" "$CUSTOMERS" "$TOKEN" 2>&1)
  wrk_json "$out" | jq -c '{req_per_s: ((.ok / .seconds) | floor), p50_ms, p99_ms, non_2xx,
    statuses, socket_errors}'
}

wrk -t"$THREADS" -c"$CONNS" -d2s -s "$ROOT/bench/read.lua" "$base" -- key "$INVOICES" "$CUSTOMERS" "$TOKEN" >/dev/null 2>&1 # warm-up
index=$(run_ours index)
say "index page: $(jq -r '"\(.req_per_s) req/s, p50 \(.p50_ms) ms, p99 \(.p99_ms) ms, non-2xx \(.non_2xx)"' <<<"$index")"
key=$(run_ours key)
say "GET by key: $(jq -r '"\(.req_per_s) req/s, p50 \(.p50_ms) ms, p99 \(.p99_ms) ms, non-2xx \(.non_2xx)"' <<<"$key")"

# Baseline: Redis itself answering GETs of a document-sized value, same connections and threads.
secs=${DURATION%s}
n=$(awk -v s="$secs" 'BEGIN { printf "%d", s * 60000 }')
csv=$(redis-benchmark -p "$rport" -c "$CONNS" --threads "$THREADS" -n "$n" -r 100000 -d "$value_bytes" \
  -t set,get --csv 2>/dev/null | tr -d '"' | awk -F, '$1 == "GET"')
base_rps=$(cut -d, -f2 <<<"$csv" | cut -d. -f1)
base_p99=$(cut -d, -f7 <<<"$csv")
[[ -n "$base_rps" ]] || { echo "redis-benchmark printed no GET figure" >&2; exit 1; }
say "redis-benchmark GET ($value_bytes-byte values): $base_rps req/s, p99 $base_p99 ms"
peak_kb=$(hwm_kb "$PROJ_PID")

json=$(jq -cn --argjson index "$index" --argjson key "$key" --argjson brps "$base_rps" \
  --argjson bp99 "$base_p99" --arg conns "$CONNS" --arg threads "$THREADS" --arg dur "$DURATION" \
  --argjson inv "$INVOICES" --argjson cust "$CUSTOMERS" --argjson vb "$value_bytes" \
  --argjson peak "$peak_kb" '
  {bench: "read", index: $index, key: $key,
   baseline: {redis_benchmark_get_req_per_s: $brps, p99_ms: $bp99, value_bytes: $vb},
   ratio_index: (($index.req_per_s / $brps * 1000 | floor) / 1000),
   ratio_key: (($key.req_per_s / $brps * 1000 | floor) / 1000),
   target_req_per_s: 50000, target_p99_ms: 2, target_ratio: 0.5,
   invoices: $inv, customers: $cust, conns: ($conns | tonumber), threads: ($threads | tonumber),
   duration: $dur, projector_peak_rss_kb: $peak}')
say "ratios to redis-benchmark GET: index $(jq .ratio_index <<<"$json"), key $(jq .ratio_key <<<"$json") (target >= 0.5)"
bench_result read "$json"
