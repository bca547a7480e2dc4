#!/usr/bin/env bash
# Checkout sagas end to end (issue 8 §7): HTTP start, baton-saga's outbox relay to Kafka, the
# three example participants (examples/participants, no injected delay or fault) answering on
# Kafka, the replies applied in Postgres, three steps and the completion. Postgres keeps its
# default durability (checked below). Figures, all from one run:
#   saturation  wrk with CONNECTIONS (32) keep-alive connections starting sagas as fast as the
#               API answers, for DURATION (10 s), after a WARMUP (2 s) run. Starts outrun the
#               pipeline, so sagas_per_s is the sagas started in the window, all COMPLETED, over
#               the seconds from the first start to the last completion (read in Postgres);
#               transitions_per_s counts their transitions (the start and each reply applied:
#               saga.sagas.seq + 1, 4 per checkout).
#   half load   the same connections paced to half that rate, each start with ?wait=30s: p50
#               and p99 are wrk's latencies, start to COMPLETED (a 202, not ended within the
#               wait, counts with its 30 s; completed_per_s counts the 200s only).
#   in flight   the payment participant stopped, INFLIGHT (100000) sagas started and left
#               waiting on it: baton-saga's RSS then.
#   baseline    pgbench, one single-row INSERT per transaction, CONNECTIONS clients, same
#               Postgres, same duration: ratio = transitions_per_s / pgbench tps.
# Targets (issue 8): >= 3000 sagas/s, ratio >= 1.5, p99 < 50 ms at half load, RSS < 32 MB
# with 100k in flight. The last line is one JSON object, also appended to
# bench/results/saga.jsonl.
# Kafka consumers (the engine's replies, the participants' commands) get
# BENCH_KAFKA_PROPERTIES, by default fetch.wait.max.ms=5: devkafka (librdkafka's mock cluster)
# holds a fetch for the whole fetch.wait.max.ms (500 ms by default) even when records arrive
# meanwhile, which put ~250 ms per Kafka hop into every step (p50 1.5 s instead of 0.12 s for
# a checkout in one run); a real broker answers a fetch as soon as fetch.min.bytes is there.
# Set BENCH_KAFKA_PROPERTIES= to measure with librdkafka's defaults.
# Environment: BENCH_DURATION (10), BENCH_WARMUP (2), BENCH_CONNECTIONS (32), BENCH_INFLIGHT
# (100000; 0 skips that phase), BENCH_KAFKA_PROPERTIES, BENCH_SAVE (1), BATON_BUILD_DIR.
source "$(dirname "$0")/lib.sh"
shopt -s inherit_errexit
DURATION=${BENCH_DURATION:-10}
WARMUP=${BENCH_WARMUP:-2}
CONNS=${BENCH_CONNECTIONS:-32}
INFLIGHT=${BENCH_INFLIGHT:-100000}
KAFKA_PROPERTIES=${BENCH_KAFKA_PROPERTIES-fetch.wait.max.ms=5}
THREADS=2
TARGET_SAGAS=3000
TARGET_RATIO=1.5
TARGET_P99_MS=50
TARGET_RSS_KB=$((32 * 1024))
for c in wrk pgbench psql jq curl; do command -v "$c" >/dev/null || { echo "$c not found: run ./dev deps" >&2; exit 1; }; done
for v in DURATION WARMUP CONNS; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_$v must be a positive whole number, not '${!v}'" >&2; exit 1; }
done
[[ "$INFLIGHT" =~ ^[0-9]+$ ]] || { echo "BENCH_INFLIGHT must be a whole number, not '$INFLIGHT'" >&2; exit 1; }
((DURATION > WARMUP)) || { echo "BENCH_DURATION must exceed BENCH_WARMUP" >&2; exit 1; }
for b in saga/baton-saga examples/participants/baton-inventory; do
  [[ -x "$BUILD/$b" ]] || (cd "$ROOT" && ./dev build >&2)
done

bench_stack_up
tmp=$BENCH_RUN
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -tA "$BATON_PG_DSN")
bench_pg_durability

# The checkout definition as shipped, renamed checkout-bench, with 10-minute step timeouts
# and a 1-hour deadline: at saturation the backlog outgrows the shipped 5 s timeouts (a
# timeout then retries, and then compensates), which would measure the retry policy rather
# than the throughput; and in the in-flight phase sagas must stay waiting.
mkdir -p "$tmp/defs"
sed -e 's/^saga: checkout$/saga: checkout-bench/' -e 's/timeout: 5s/timeout: 10m/' \
  -e 's/^deadline: .*/deadline: 1h/' "$ROOT/examples/sagas/checkout.yaml" >"$tmp/defs/checkout-bench.yaml"
grep -q '^saga: checkout-bench$' "$tmp/defs/checkout-bench.yaml" || { echo "examples/sagas/checkout.yaml: no 'saga: checkout' line" >&2; exit 1; }
reply_topic=$(sed -n 's/^reply_topic: *//p' "$tmp/defs/checkout-bench.yaml")

# start_svc NAME BINARY PORT [ENV=VALUE...]: starts a service, waits for /readyz 200 and then
# for its consumer's partitions (a group join takes seconds: a start before it would time
# out); sets SVC_PID.
start_svc() {
  local name=$1 bin=$2 port=$3 i
  shift 3
  env "$@" BATON_HTTP_PORT="$port" BATON_LOG_LEVEL=warn BATON_PG_DSN="$BATON_PG_DSN" \
    BATON_KAFKA_BROKERS="$BATON_KAFKA_BROKERS" ${KAFKA_PROPERTIES:+BATON_KAFKA_PROPERTIES="$KAFKA_PROPERTIES"} \
    "$BUILD/$bin" >"$tmp/$name.log" 2>&1 &
  SVC_PID=$!
  BENCH_PIDS+=("$SVC_PID")
  for i in $(seq 1 600); do
    if [[ "$(http_status "$port" /readyz 2>/dev/null)" == 200 ]] &&
      curl -fsS "http://127.0.0.1:$port/metrics" | awk '$1 == "baton_kafka_consumer_assigned_partitions" && $2 > 0 { ok = 1 } END { exit !ok }'; then
      return 0
    fi
    kill -0 "$SVC_PID" 2>/dev/null || break
    sleep 0.1
  done
  cat "$tmp/$name.log" >&2
  echo "$name did not become ready with partitions assigned" >&2
  exit 1
}

sport=$(free_port)
start_svc saga saga/baton-saga "$sport" BATON_SAGA_DEFINITIONS="$tmp/defs" BATON_SAGA_REPLY_TOPIC="$reply_topic"
SAGA_PID=$SVC_PID
url="http://127.0.0.1:$sport"
declare -A PART_PID
for role in inventory payment shipping; do
  start_svc "$role" "examples/participants/baton-$role" "$(free_port)"
  PART_PID[$role]=$SVC_PID
done
say "baton-saga on $url, participants ready"

# The sagas created since a time (epoch seconds): how many, how many COMPLETED, their
# transitions (the start and each reply applied: seq + 1), and the seconds from the first
# creation to the last end.
since() {
  "${PSQL[@]}" -F ' ' -c "SELECT count(*), count(*) FILTER (WHERE state = 'COMPLETED'),
    coalesce(sum(seq + 1), 0),
    coalesce(extract(epoch FROM max(ended_at) - min(created_at)), 0)
    FROM saga.sagas WHERE created_at >= to_timestamp($1)"
}
running() { "${PSQL[@]}" -c "SELECT count(*) FROM saga.sagas WHERE state IN ('RUNNING', 'COMPENSATING')"; }
wait_idle() {
  local i
  for i in $(seq 1 1200); do [[ "$(running)" == 0 ]] && return 0; sleep 0.1; done
  echo "sagas still running 120 s after the load stopped: $(running)" >&2
  exit 1
}

# ---- warm-up and saturation -------------------------------------------------------------
say "warm-up: ${WARMUP}s"
wrk -t$THREADS -c"$CONNS" -d"${WARMUP}s" -s "$ROOT/bench/saga.lua" "$url" -- /v1/sagas/checkout-bench 0 >/dev/null 2>&1
wait_idle
say "saturation: $CONNS connections starting sagas for ${DURATION}s"
t0=$(date +%s.%N)
out=$(wrk -t$THREADS -c"$CONNS" -d"${DURATION}s" -s "$ROOT/bench/saga.lua" "$url" -- /v1/sagas/checkout-bench 0 2>&1)
sat=$(wrk_json "$out")
backlog=$(running)
wait_idle
# Starts outrun the pipeline: the rate is the sagas started in the window over the time from
# the first start to the last completion, the backlog drained at the pipeline's own pace.
read -r n_sat done_n trans_n span <<<"$(since "$t0")"
if [[ "$done_n" != "$n_sat" ]]; then
  echo "$((n_sat - done_n)) of $n_sat sagas did not complete (fast participants, no fault: all should):" >&2
  "${PSQL[@]}" -c "SELECT state, count(*) FROM saga.sagas GROUP BY 1" >&2
  exit 1
fi
sagas_per_s=$(awk -v n="$done_n" -v w="$span" 'BEGIN { printf "%.0f", (w > 0 ? n / w : 0) }')
trans_per_s=$(awk -v n="$trans_n" -v w="$span" 'BEGIN { printf "%.0f", (w > 0 ? n / w : 0) }')
started_per_s=$(jq '.ok / .seconds | round' <<<"$sat")
say "saturation: $started_per_s starts/s answered 201 ($backlog running when the starts stopped); $done_n sagas completed in $span s: $sagas_per_s sagas/s, $trans_per_s transitions/s"

# ---- half load with ?wait ------------------------------------------------------------------
half=$(awk -v r="$sagas_per_s" 'BEGIN { h = r / 2; if (h < 1) h = 1; printf "%.1f", h }')
pace_ms=$(awk -v c="$CONNS" -v h="$half" 'BEGIN { printf "%d", c * 1000 / h }')
# At least a few requests per connection, however slow the pipeline.
half_secs=$(awk -v d="$DURATION" -v p="$pace_ms" 'BEGIN { s = 4 * p / 1000; if (s < d) s = d; if (s > 120) s = 120; printf "%d", s }')
say "half load: $half sagas/s targeted ($CONNS connections, ${pace_ms} ms between a connection's requests), ?wait=30s, ${half_secs}s"
out=$(wrk -t$THREADS -c"$CONNS" -d"${half_secs}s" --timeout 40s -s "$ROOT/bench/saga.lua" "$url" -- "/v1/sagas/checkout-bench?wait=30s" "$pace_ms" 2>&1)
halfj=$(wrk_json "$out")
say "half load: $(jq -r '"\((.statuses["200"] // 0) / .seconds | round) sagas/s completed within the wait, p50 \(.p50_ms) ms, p99 \(.p99_ms) ms, non-200 \(.non_2xx)"' <<<"$halfj")"
wait_idle

# ---- baseline ------------------------------------------------------------------------------
"${PSQL[@]}" -c "CREATE TABLE bench_insert (id bigserial PRIMARY KEY, payload text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now())"
printf '%s\n' "INSERT INTO bench_insert (payload) VALUES ('{\"sku\":\"sku-' || :client_id || '\",\"quantity\":1}');" >"$tmp/insert.sql"
"${PSQL[@]}" -c CHECKPOINT
out=$(pgbench -n -c "$CONNS" -j $THREADS -T "$DURATION" -M prepared -f "$tmp/insert.sql" "$BATON_PG_DSN" 2>&1)
tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' <<<"$out" | head -n1)
[[ -n "$tps" ]] || { printf 'cannot read pgbench tps:\n%s\n' "$out" >&2; exit 1; }
tps=$(awk -v t="$tps" 'BEGIN { printf "%.0f", t }')
r=$(ratio "$trans_per_s" "$tps")
say "baseline: pgbench single-row INSERT, $CONNS clients: $tps tx/s; ratio $r"

# ---- in flight -----------------------------------------------------------------------------
rss_idle=$(rss_kb "$SAGA_PID")
rss_inflight=null
waiting=0
if ((INFLIGHT > 0)); then
  kill "${PART_PID[payment]}"
  wait "${PART_PID[payment]}" 2>/dev/null || true
  say "in flight: payment stopped; starting $INFLIGHT sagas"
  waiting_now() { "${PSQL[@]}" -c "SELECT count(*) FROM saga.sagas WHERE state = 'RUNNING'"; }
  for i in $(seq 1 200); do
    waiting=$(waiting_now)
    ((waiting >= INFLIGHT)) && break
    left=$((INFLIGHT - waiting))
    secs=$(awk -v l="$left" -v r="$started_per_s" 'BEGIN { s = l / (r > 0 ? r : 100); if (s < 1) s = 1; if (s > 20) s = 20; printf "%d", s }')
    wrk -t$THREADS -c"$CONNS" -d"${secs}s" -s "$ROOT/bench/saga.lua" "$url" -- /v1/sagas/checkout-bench 0 >/dev/null 2>&1
  done
  sleep 3 # the first step's replies applied, the relay caught up
  waiting=$(waiting_now)
  rss_inflight=$(rss_kb "$SAGA_PID")
  say "in flight: $waiting sagas waiting on payment; baton-saga RSS $rss_inflight kB (before: $rss_idle kB)"
fi
hwm=$(hwm_kb "$SAGA_PID")

bench_cleanup
trap - EXIT
bench_result saga "$(jq -cn --argjson sagas "$sagas_per_s" --argjson trans "$trans_per_s" \
  --argjson started "$started_per_s" --argjson backlog "$backlog" --argjson tps "$tps" --argjson r "$r" \
  --argjson half "$halfj" --argjson halft "$half" --argjson conns "$CONNS" --argjson secs "$DURATION" \
  --argjson warm "$WARMUP" --argjson inflight "$waiting" --argjson rss "$rss_inflight" \
  --argjson rss_idle "$rss_idle" --argjson hwm "${hwm:-null}" --argjson sat "$sat" \
  --argjson ts "$TARGET_SAGAS" --argjson tr "$TARGET_RATIO" --argjson tp "$TARGET_P99_MS" \
  --argjson trss "$TARGET_RSS_KB" --arg durability "$durability" --arg kprops "$KAFKA_PROPERTIES" '
  {bench: "saga", unit: "sagas/s (3 steps and completion, end to end)",
   sagas_per_s: $sagas, target_sagas_per_s: $ts, sagas_met: ($sagas >= $ts),
   transitions_per_s: $trans, pgbench_insert_tps: $tps, ratio: $r, target_ratio: $tr,
   ratio_met: ($r != null and $r >= $tr),
   half_load: {target_sagas_per_s: $halft,
               completed_per_s: (($half.statuses["200"] // 0) / $half.seconds | round),
               p50_ms: $half.p50_ms, p99_ms: $half.p99_ms, non_200: $half.non_2xx,
               statuses: $half.statuses},
   p99_ms_half_load: $half.p99_ms, target_p99_ms: $tp, p99_met: ($half.p99_ms < $tp),
   inflight_sagas: $inflight, rss_kb_inflight: $rss, rss_kb_before: $rss_idle,
   target_rss_kb: $trss, rss_met: (if $rss == null then null else $rss < $trss end),
   saga_peak_rss_kb: $hwm, starts_per_s_answered: $started, backlog_at_end: $backlog,
   saturation_wrk: $sat, connections: $conns, duration_s: $secs, warmup_s: $warm,
   kafka_properties: $kprops,
   postgres: $durability}')"
