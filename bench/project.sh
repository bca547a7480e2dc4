#!/usr/bin/env bash
# Projector throughput (issue 9 §6): how fast baton-projector applies billing events that are
# already in Kafka, into Redis and Postgres together and into each alone, against the raw write
# ceiling of the same Redis and Postgres measured in the same run.
#  - Workload: EVENTS (BENCH_EVENTS, default 1,000,000) billing events from
#    examples/billing-generator (protobuf, CUSTOMERS customers, seed 1) produced to devkafka
#    before anything is timed. About 78% are invoice events (legacy.billing.invoices, the ones
#    the invoices projection applies); the rest are customer events on their own topic, which
#    the projection does not read. devkafka (librdkafka's mock cluster) keeps about 5 MB per
#    partition and drops older data beyond that, so both topics get PARTITIONS partitions
#    (default: enough for ~2.5 MB each, ~140 bytes a record); the run checks that every
#    partition still starts at offset 0 and that the topic holds exactly the invoice events
#    the generator's own output counts.
#  - Ours: examples/projections/invoices.yaml renamed three times, one projection per run
#    (each has its own consumer group and storage, so each reads the same topic from 0):
#    sinks [redis, postgres], [redis] and [postgres], one baton-projector each, one after
#    the other. events/s = invoice events applied / time from the first applied event to the
#    last (baton_projector_events_total, polled every 20 ms), so start-up and the group join
#    are not counted. batches counts sink writes (one per sink per batch).
#  - Rebuild: after the both-sinks run has applied every event, the same projector is asked to
#    rebuild (POST /v1/projections/NAME/rebuild): version 2 is built beside version 1 from the
#    topic's start, into both sinks. rebuild_events_per_s = invoice events / time from the POST
#    to the switch (projector.versions shows version 2 live), start-up of the build included.
#  - Baseline: redis-cli --pipe of one SET per invoice event (a document-sized JSON value,
#    the projector's own document layout) and COPY of the same number of rows into a table
#    shaped like the projector's (key, doc jsonb, customer_id, due_date, amount_cents, with the
#    projector's two indexes), in one transaction. The slower of the two is the baseline;
#    ratio = ours (both sinks) / baseline.
#  - Target: >= 200,000 events/s with both sinks, or ratio >= 0.5.
# Postgres keeps its default durability (fsync and synchronous_commit on). The last line is one
# JSON object, also appended to bench/results/project.jsonl.
# usage: bench/project.sh [EVENTS]   (environment: BENCH_EVENTS, BENCH_CUSTOMERS (10000),
#        BENCH_PARTITIONS, BENCH_BATCH (the projector's BATON_PROJECTOR_BATCH, default its own),
#        BENCH_MAX_IN_FLIGHT (its BATON_PROJECTOR_MAX_IN_FLIGHT), BENCH_TIMEOUT (300 s per run),
#        BENCH_PERF=FILE (perf record of the both-sinks projector, top symbols written to FILE),
#        BENCH_SAVE, BATON_BUILD_DIR)
source "$(dirname "$0")/lib.sh"
shopt -s inherit_errexit
EVENTS=${1:-${BENCH_EVENTS:-1000000}}
CUSTOMERS=${BENCH_CUSTOMERS:-10000}
TIMEOUT=${BENCH_TIMEOUT:-300}
TOPIC=legacy.billing.invoices
CUSTOMERS_TOPIC=legacy.billing.customers
TARGET_RATE=200000
TARGET_RATIO=0.5
for v in EVENTS CUSTOMERS TIMEOUT; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "$v must be a positive whole number, not '${!v}'" >&2; exit 1; }
done
# ~140 bytes a stored record (key, ~78-byte protobuf value, content-type header, framing);
# 2.5 MB a partition leaves half of devkafka's 5 MB as margin.
PARTITIONS=${BENCH_PARTITIONS:-$(( (EVENTS * 140 + 2500000 - 1) / 2500000 ))}
((PARTITIONS >= 1)) || PARTITIONS=1
for c in redis-cli psql jq curl kcat; do command -v "$c" >/dev/null || { echo "$c not found: run ./dev deps" >&2; exit 1; }; done
GEN=$BUILD/examples/billing-generator/billing-generator
[[ -x "$BUILD/projector/baton-projector" && -x "$GEN" ]] || (cd "$ROOT" && ./dev build >&2)

export BATON_DEV_KAFKA_TOPICS="$TOPIC:$PARTITIONS,$CUSTOMERS_TOPIC:$PARTITIONS,projector.dlq:1"
bench_stack_up
tmp=$BENCH_RUN
rport=$BATON_DEV_REDIS_PORT
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -tA "$BATON_PG_DSN")
durability=$("${PSQL[@]}" -c "SELECT string_agg(name || '=' || setting, ' ' ORDER BY name)
  FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit')")
say "postgres: $durability; $PARTITIONS partitions per topic"

# ---- workload ---------------------------------------------------------------------------------
# The oracle for the count: the generator's own output as CloudEvents lines (same seed, same
# sequence of kinds), invoice events being every type but CustomerUpdated.
expected=$("$GEN" --events "$EVENTS" --customers "$CUSTOMERS" --format cloudevents-json --out - |
  grep -vc '"type":"CustomerUpdated"' || true)
say "producing $EVENTS events ($expected invoice events) to devkafka"
t0=$(now_ns)
"$GEN" --events "$EVENTS" --customers "$CUSTOMERS" --brokers "$BATON_KAFKA_BROKERS" >&2
t1=$(now_ns)
produce_s=$(awk -v d=$((t1 - t0)) 'BEGIN { printf "%.2f", d / 1e9 }')
# Every partition must still hold its first record (nothing dropped by devkafka's retention),
# and the topic must hold exactly the invoice events.
read -r records dropped < <(kcat -b "$BATON_KAFKA_BROKERS" -C -t "$TOPIC" -o beginning -e -q -f '%p %o\n' |
  awk '{ c++; if (!($1 in lo) || $2 < lo[$1]) lo[$1] = $2 }
       END { d = 0; for (p in lo) if (lo[p] != 0) d++; printf "%d %d\n", c, d }')
[[ "$records" == "$expected" && "$dropped" == 0 ]] || {
  echo "the topic holds $records records ($dropped partitions not starting at 0), the generator made $expected invoice events: raise BENCH_PARTITIONS" >&2
  exit 1
}
say "produced in ${produce_s}s; every partition starts at 0 and the topic holds $expected records"

# ---- ours ---------------------------------------------------------------------------------------
# run_ours NAME SINKS: one projector applying the whole topic into projection NAME with SINKS;
# prints one JSON object (events, seconds, events/s, peak RSS).
run_ours() {
  local name=$1 sinks=$2 dir=$tmp/defs-$1 port pid out t_first=0 n_first=0 t_last n now
  mkdir -p "$dir"
  sed -e "s/^projection: invoices$/projection: $name/" -e "s/^sinks: .*/sinks: $sinks/" \
    "$ROOT/examples/projections/invoices.yaml" >"$dir/$name.yaml"
  # free_port only probes: another process can take the port before the projector binds it,
  # so a start that fails that way is retried on another port.
  local try
  for try in 1 2 3 4 5; do
    port=$(free_port)
    env BATON_HTTP_PORT="$port" BATON_PROJECTIONS="$dir" BATON_PG_DSN="$BATON_PG_DSN" \
      BATON_REDIS_URL="$BATON_REDIS_URL" BATON_KAFKA_BROKERS="$BATON_KAFKA_BROKERS" \
      ${BENCH_BATCH:+BATON_PROJECTOR_BATCH=$BENCH_BATCH} \
      ${BENCH_MAX_IN_FLIGHT:+BATON_PROJECTOR_MAX_IN_FLIGHT=$BENCH_MAX_IN_FLIGHT} BATON_LOG_LEVEL=warn \
      "$BUILD/projector/baton-projector" >"$tmp/projector-$name.log" 2>&1 &
    pid=$!
    # run_ours runs in $(...): the projector is stopped by this subshell's own trap, since
    # bench_cleanup in the parent never sees pids added here.
    trap 'kill "$pid" 2>/dev/null || true' EXIT
    for _ in $(seq 1 200); do
      [[ "$(http_status "$port" /healthz 2>/dev/null)" == 200 ]] && break
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.01
    done
    kill -0 "$pid" 2>/dev/null && break
    grep -q 'address already in use' "$tmp/projector-$name.log" || break
    say "  port $port was taken; starting again (attempt $try)"
  done
  local perf_pid=
  if [[ -n "${BENCH_PERF:-}" && "$name" == inv_both ]]; then
    perf record -g -o "$tmp/perf.data" -p "$pid" >/dev/null 2>&1 &
    perf_pid=$!
  fi
  local deadline=$(( $(date +%s) + TIMEOUT ))
  n=0
  while ((n < expected)); do
    if (($(date +%s) >= deadline)) || ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$tmp/projector-$name.log" >&2
      echo "projector $name applied $n of $expected events within ${TIMEOUT}s" >&2
      return 1
    fi
    sleep 0.02
    out=$(curl -fsS "http://127.0.0.1:$port/metrics" 2>/dev/null || true)
    now=$(now_ns)
    n=$(awk '$1 ~ /^baton_projector_events_total/ { s += $2 } END { printf "%d", s }' <<<"$out")
    if ((t_first == 0 && n > 0)); then t_first=$now n_first=$n; fi
  done
  t_last=$now
  local dl
  dl=$(awk '$1 ~ /^baton_projector_dead_letters_total/ { s += $2 } END { printf "%d", s }' <<<"$out")
  local peak batches cpu pauses fetched
  # Fetch pauses: the projector's held queue stayed full with nothing applied for 1 s (or 30 s in all; sinks behind by
  # BATON_PROJECTOR_MAX_IN_FLIGHT); each drops what librdkafka prefetched, fetched again at
  # resume. fetched: messages librdkafka received (its statistics, up to 1 s old), refetches
  # included, over both topics' assigned partitions.
  fetched=$(awk '$1 ~ /^baton_kafka_consumer_fetched_messages/ { s += $2 } END { printf "%d", s }' <<<"$out")
  pauses=$(awk '$1 ~ /^baton_kafka_consumer_budget_pauses_total/ { s += $2 } END { printf "%d", s }' <<<"$out")
  peak=$(hwm_kb "$pid")
  # CPU seconds the projector used in all (user + system), start-up included: far below the
  # run's seconds means it waited, not computed.
  cpu=$(awk -v t="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / t }' "/proc/$pid/stat")
  batches=$(awk '$1 ~ /^baton_projector_batches_total/ { s += $2 } END { printf "%d", s }' <<<"$out")
  local rebuild=null
  if [[ "$name" == inv_both ]]; then
    # Rebuild speed (see the top): POST, then wait for version 2 to go live.
    local r0 r1 st deadline2=$(( $(date +%s) + TIMEOUT ))
    r0=$(now_ns)
    st=$(curl -sS -o "$tmp/rebuild.json" -w '%{http_code}' -X POST "http://127.0.0.1:$port/v1/projections/$name/rebuild")
    [[ "$st" == 202 ]] || { echo "rebuild answered $st: $(cat "$tmp/rebuild.json")" >&2; return 1; }
    until [[ "$("${PSQL[@]}" -c "SELECT count(*) FROM projector.versions WHERE projection = '$name' AND version = 2 AND state = 'live'")" == 1 ]]; do
      if (($(date +%s) >= deadline2)) || ! kill -0 "$pid" 2>/dev/null; then
        tail -n 20 "$tmp/projector-$name.log" >&2
        echo "the rebuild of $name did not switch within ${TIMEOUT}s" >&2
        return 1
      fi
      sleep 0.02
    done
    r1=$(now_ns)
    rebuild=$(awk -v n="$expected" -v d=$((r1 - r0)) 'BEGIN { printf "{\"seconds\":%.3f,\"events_per_s\":%d}", d / 1e9, n / (d / 1e9) }')
  fi
  if [[ -n "$perf_pid" ]]; then
    kill -INT "$perf_pid"
    wait "$perf_pid" 2>/dev/null || true
    cp "$tmp/perf.data" "$BENCH_PERF.data"
    perf report -i "$tmp/perf.data" --no-children --percent-limit 1.5 --stdio 2>/dev/null |
      grep -E '^ +[0-9]' >"$BENCH_PERF" || true
  fi
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  trap - EXIT
  local nsinks
  nsinks=$(tr -cd , <<<"$sinks" | wc -c)
  nsinks=$((nsinks + 1))
  jq -cn --argjson n "$n" --argjson nf "$n_first" --argjson nsinks "$nsinks" --argjson t0 "$t_first" --argjson t1 "$t_last" \
    --argjson dl "$dl" --argjson peak "$peak" --arg sinks "$sinks" --argjson batches "$batches" --argjson cpu "$cpu" --argjson pauses "$pauses" --argjson fetched "$fetched" --argjson rebuild "$rebuild" '
    (($t1 - $t0) / 1e9) as $s |
    {sinks: $sinks, events: $n, seconds: ($s * 1000 | floor / 1000),
     events_per_s: (if $s > 0 then (($n - $nf) / $s | floor) else null end),
     batches: $batches, mean_batch: (if $batches > 0 then ($n * $nsinks / $batches | floor) else null end),
     cpu_seconds: $cpu, fetch_pauses: $pauses, fetched: $fetched, dead_letters: $dl, peak_rss_kb: $peak}
    + (if $rebuild == null then {} else {rebuild: $rebuild} end)'
}

# check_sinks NAME REDIS PG: the documents each sink holds at the end, counted directly.
count_redis_docs() {
  redis-cli -p "$rport" --scan --pattern "bt:proj:{$1}:v1:doc:*" >"$tmp/keys-$1"
  wc -l <"$tmp/keys-$1"
}
count_pg_docs() { "${PSQL[@]}" -c "SELECT count(*) FROM projector.\"$1_v1\""; }

say "ours: both sinks"
both=$(run_ours inv_both '[redis, postgres]')
say "  $both"
docs_redis=$(count_redis_docs inv_both)
docs_pg=$(count_pg_docs inv_both)
[[ "$docs_redis" == "$docs_pg" && "$docs_redis" -gt 0 ]] || {
  echo "after the run Redis holds $docs_redis documents and Postgres $docs_pg" >&2
  exit 1
}
say "  both sinks hold $docs_pg documents"
say "ours: redis alone"
redis_only=$(run_ours inv_redis '[redis]')
say "  $redis_only"
[[ "$(count_redis_docs inv_redis)" == "$docs_redis" ]] || { echo "redis-only run holds a different document count" >&2; exit 1; }
say "ours: postgres alone"
pg_only=$(run_ours inv_pg '[postgres]')
say "  $pg_only"
[[ "$(count_pg_docs inv_pg)" == "$docs_pg" ]] || { echo "postgres-only run holds a different row count" >&2; exit 1; }
doc_bytes=$(redis-cli -p "$rport" STRLEN "$(head -n1 "$tmp/keys-inv_both")")

# ---- baseline -----------------------------------------------------------------------------------
# The same number of writes as invoice events, values the size of the projector's documents.
say "baseline: $expected redis SETs through redis-cli --pipe, COPY of $expected rows"
awk -v n="$expected" -v c="$CUSTOMERS" -v b="$doc_bytes" 'BEGIN {
  pad = ""; for (i = 0; i < b - 90 && i < 400; i++) pad = pad "x";
  for (i = 1; i <= n; i++) {
    k = sprintf("bt:base:doc:inv-%010d", i);
    v = sprintf("{\"customer_id\":\"cust-%06d\",\"amount_cents\":%d,\"due_date\":\"2024-02-01\",\"status\":\"unpaid\",\"p\":\"%s\"}", i % c, i * 7 % 200000, pad);
    printf "*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n", length(k), k, length(v), v
  } }' >"$tmp/base.resp"
awk -v n="$expected" -v c="$CUSTOMERS" 'BEGIN {
  for (i = 1; i <= n; i++) {
    cu = sprintf("cust-%06d", i % c); a = i * 7 % 200000;
    printf "inv-%010d\t{\"customer_id\": \"%s\", \"amount_cents\": %d, \"due_date\": \"2024-02-01\", \"status\": \"unpaid\"}\t%s\t2024-02-01\t%d\n", i, cu, a, cu, a
  } }' >"$tmp/base.tsv"
"${PSQL[@]}" -c 'CREATE TABLE bench_copy (key text PRIMARY KEY, doc jsonb NOT NULL,
  customer_id text, due_date text, amount_cents bigint);
  CREATE INDEX ON bench_copy (customer_id); CREATE INDEX ON bench_copy (customer_id, due_date, key);
  CHECKPOINT'
t0=$(now_ns)
redis-cli -p "$rport" --pipe <"$tmp/base.resp" >"$tmp/pipe.log"
t1=$(now_ns)
grep -q "errors: 0, replies: $expected" "$tmp/pipe.log" || { cat "$tmp/pipe.log" >&2; exit 1; }
t2=$(now_ns)
"${PSQL[@]}" -c "\\copy bench_copy FROM '$tmp/base.tsv'"
t3=$(now_ns)
[[ "$("${PSQL[@]}" -c 'SELECT count(*) FROM bench_copy')" == "$expected" ]] || { echo "COPY stored a different row count" >&2; exit 1; }
redis_rate=$(awk -v n="$expected" -v d=$((t1 - t0)) 'BEGIN { printf "%d", n / (d / 1e9) }')
copy_rate=$(awk -v n="$expected" -v d=$((t3 - t2)) 'BEGIN { printf "%d", n / (d / 1e9) }')
say "  redis --pipe SET: $redis_rate keys/s; COPY: $copy_rate rows/s"

json=$(jq -cn --argjson both "$both" --argjson redis "$redis_only" --argjson pg "$pg_only" \
  --argjson rr "$redis_rate" --argjson cr "$copy_rate" --argjson events "$EVENTS" \
  --argjson applied "$expected" --argjson parts "$PARTITIONS" --argjson cust "$CUSTOMERS" \
  --argjson docs "$docs_pg" --argjson db "${doc_bytes:-0}" --arg produce "$produce_s" \
  --arg durability "$durability" --argjson tr "$TARGET_RATE" --argjson tt "$TARGET_RATIO" \
  --arg batch "${BENCH_BATCH:-default}" --arg mif "${BENCH_MAX_IN_FLIGHT:-default}" '
  ([$rr, $cr] | min) as $base |
  {bench: "project", ours: $both.events_per_s, baseline: $base,
   ratio: (($both.events_per_s / $base * 1000 | floor) / 1000),
   unit: "invoice events applied per second (both sinks)",
   both: $both, redis_only: $redis, postgres_only: $pg,
   rebuild_events_per_s: $both.rebuild.events_per_s, rebuild_seconds: $both.rebuild.seconds,
   baseline_detail: {redis_pipe_set_per_s: $rr, pg_copy_rows_per_s: $cr,
     slower: (if $rr < $cr then "redis" else "postgres" end), value_bytes: $db},
   events_generated: $events, invoice_events: $applied, documents_at_end: $docs,
   partitions: $parts, customers: $cust, projector_batch: $batch, projector_max_in_flight: $mif, produce_seconds: ($produce | tonumber),
   postgres: $durability, target_events_per_s: $tr, target_ratio: $tt,
   meets_target: ($both.events_per_s >= $tr or ($both.events_per_s / $base) >= $tt)}')
say "both sinks $(jq .ours <<<"$json") events/s, baseline $(jq .baseline <<<"$json"), ratio $(jq .ratio <<<"$json") (target >= $TARGET_RATE events/s or ratio >= $TARGET_RATIO)"
bench_result project "$json"
