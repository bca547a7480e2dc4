#!/usr/bin/env bash
# Publish throughput of baton-broker into devkafka, against kcat producing the same events
# straight into the same devkafka, in the same run. Both producers use acks=all, idempotence
# and the same linger (BENCH_LINGER_MS, default 0 = the broker's default): the broker gets
# BATON_KAFKA_LINGER, kcat -X linger.ms, and the output states the value.
#  1. Batches of 100 events (~200 bytes each) over 16 keep-alive HTTP connections (wrk), once
#     as JSON and once as protobuf, each about BENCH_EVENTS events: target >= 0.5x kcat's
#     event rate, for each encoding.
#  2. Single-event requests with 64 connections: target >= 30,000 req/s, with p50 and p99.
# Only 2xx answers count (wrk_status.lua); 429s, 503s and the like are reported next to the
# figure, never in it. kcat counts only what devkafka acknowledged (its end offsets), and so
# does the broker (its topic's end offsets must cover every 2xx). The broker's peak RSS is
# printed too. Last line: one JSON object, also appended to bench/results/publish.jsonl.
# Environment: BENCH_EVENTS (1000000), BENCH_SINGLE_DURATION (10s), BENCH_LINGER_MS (0),
# BENCH_SAVE (1), BATON_BUILD_DIR.
source "$(dirname "$0")/lib.sh"
EVENTS=${BENCH_EVENTS:-1000000}
SINGLE_DURATION=${BENCH_SINGLE_DURATION:-10s}
LINGER_MS=${BENCH_LINGER_MS:-0}
BATCH=100
TARGET=0.5
SINGLE_TARGET=30000
for c in wrk kcat jq cc; do command -v "$c" >/dev/null || { echo "$c not found: run ./dev deps" >&2; exit 1; }; done
[[ "$LINGER_MS" =~ ^[0-9]+$ ]] || { echo "BENCH_LINGER_MS must be whole milliseconds, not '$LINGER_MS'" >&2; exit 1; }

bench_stack_up
tmp=$BENCH_RUN
topic=bench.publish
curl -fsS -X POST "$BATON_DEVKAFKA_CONTROL/topics" -d "{\"name\":\"$topic\",\"partitions\":6}" >/dev/null
curl -fsS -X POST "$BATON_DEVKAFKA_CONTROL/topics" -d "{\"name\":\"$topic.kcat\",\"partitions\":6}" >/dev/null

# end_offsets TOPIC: records acknowledged in the topic so far (sum of its high watermarks).
end_offsets() {
  local p args=()
  for p in 0 1 2 3 4 5; do args+=(-t "$1:$p:-1"); done
  kcat -Q -b "$BATON_KAFKA_BROKERS" "${args[@]}" | awk '{ n += $NF } END { print n + 0 }'
}

# One ~200-byte event, as JSON for us and as the raw value for kcat.
data='{"order_id":"ord-000001","customer":"c-42","amount_cents":12999,"currency":"EUR","items":3,"note":"benchmark payload padding........"}'
event() { printf '{"specversion":"1.0","id":"ev-%s","source":"/bench","type":"order.placed","subject":"order-%s","data":%s}' "$1" "$(( $1 % 1000 ))" "$data"; }
{ printf '['; for i in $(seq 1 $BATCH); do [[ $i -gt 1 ]] && printf ','; event "$i"; done; printf ']'; } >"$tmp/batch.json"
event 1 >"$tmp/single.json"
event_bytes=$(event 1 | wc -c)
say "event size: $event_bytes bytes as JSON, value $(printf '%s' "$data" | wc -c) bytes; linger ${LINGER_MS} ms for kcat and the broker"

# Baseline: kcat, acks=all, idempotent, same linger, same devkafka.
awk -v d="$data" -v n="$EVENTS" 'BEGIN { for (i = 0; i < n; i++) printf "order-%d|%s\n", i % 1000, d }' >"$tmp/kcat.in"
t0=$(now_ns)
kcat -P -b "$BATON_KAFKA_BROKERS" -t "$topic.kcat" -K '|' -X acks=all -X enable.idempotence=true \
  -X linger.ms="$LINGER_MS" <"$tmp/kcat.in"
t1=$(now_ns)
kcat_acked=$(end_offsets "$topic.kcat")
kcat_rate=$(awk -v n="$kcat_acked" -v ns=$((t1 - t0)) 'BEGIN { printf "%.0f", n / (ns / 1e9) }')
say "kcat: $kcat_acked of $EVENTS events acknowledged in $(( (t1 - t0) / 1000000 )) ms = $kcat_rate events/s"

bport=$(free_port)
start_broker "$bport" "$tmp/broker.log" BATON_KAFKA_BROKERS="$BATON_KAFKA_BROKERS" \
  BATON_KAFKA_LINGER="${LINGER_MS}ms"
[[ "$(http_status "$bport" /readyz)" == 200 ]] || { cat "$tmp/broker.log" >&2; echo "broker not ready" >&2; exit 1; }
url="http://127.0.0.1:$bport/v1/topics/$topic/events"

# The same batch as a baton.v1.EventBatch, for the protobuf ingest mode.
cc -O2 -o "$tmp/gen_batch" "$ROOT/bench/gen_batch.c" "$BUILD/proto/baton/v1/event.pb-c.c" \
  -I"$BUILD/proto" -lprotobuf-c
"$tmp/gen_batch" $BATCH "$data" >"$tmp/batch.pb"

# run_wrk BODY CTYPE WRK-ARGS...: the wrk_status.lua summary of one run (stderr: wrk's text).
run_wrk() {
  local body=$1 ctype=$2 out
  shift 2
  out=$(BENCH_BODY=$body BENCH_CTYPE=$ctype wrk "$@" -s "$ROOT/bench/publish.lua" "$url" 2>&1)
  grep -E "requests in|Non-2xx|Socket errors" <<<"$out" >&2 || true
  wrk_json "$out"
}
# batch_figures WRK-JSON: events/s from 2xx answers only, and the ratio to kcat.
batch_figures() {
  jq -c --argjson n $BATCH --argjson kcat "$kcat_rate" '
    (.ok * $n / .seconds | round) as $rate
    | {events_per_s: $rate, ratio: (if $kcat > 0 then ($rate / $kcat * 1000 | round) / 1000 else null end),
       events_ok: (.ok * $n), requests_ok: .ok, non_2xx: .non_2xx, statuses: .statuses,
       seconds: .seconds, p50_ms: .p50_ms, p99_ms: .p99_ms, socket_errors: .socket_errors}' <<<"$1"
}

# 1. Batches of 100: run long enough for about $EVENTS events at kcat's pace, at least 5 s.
secs=$(awk -v n="$EVENTS" -v r="$kcat_rate" 'BEGIN { s = (r > 0) ? n / (r * 0.8) : 60; if (s < 5) s = 5; if (s > 60) s = 60; printf "%d", s }')
acked0=$(end_offsets "$topic")
json=$(batch_figures "$(run_wrk "$tmp/batch.json" application/cloudevents-batch+json -t1 -c16 -d"${secs}s")")
say "baton JSON batches of $BATCH: $(jq -r '"\(.events_per_s) events/s (2xx only), ratio \(.ratio) to kcat (target >= '$TARGET'), non-2xx \(.non_2xx)"' <<<"$json")"
pb=$(batch_figures "$(run_wrk "$tmp/batch.pb" application/x-protobuf -t1 -c16 -d"${secs}s")")
say "baton protobuf batches of $BATCH: $(jq -r '"\(.events_per_s) events/s (2xx only), ratio \(.ratio) to kcat (target >= '$TARGET'), non-2xx \(.non_2xx)"' <<<"$pb")"

# 2. Single events, 64 connections.
single=$(run_wrk "$tmp/single.json" application/cloudevents+json -t2 -c64 -d"$SINGLE_DURATION" --latency)
single=$(jq -c '{req_per_s: (.ok / .seconds | round), requests_ok: .ok, non_2xx: .non_2xx,
  statuses: .statuses, seconds: .seconds, p50_ms: .p50_ms, p99_ms: .p99_ms,
  socket_errors: .socket_errors}' <<<"$single")
peak=$(hwm_kb "$BROKER_PID")
say "baton single events: $(jq -r '"\(.req_per_s) req/s (2xx only; target >= '$SINGLE_TARGET'), p50 \(.p50_ms) ms, p99 \(.p99_ms) ms, non-2xx \(.non_2xx)"' <<<"$single"); broker peak RSS $peak kB"

# The oracle: every event answered 2xx is in the topic.
kill "$BROKER_PID"
wait "$BROKER_PID" 2>/dev/null || true
acked=$(( $(end_offsets "$topic") - acked0 ))
answered=$(jq -n --argjson a "$json" --argjson b "$pb" --argjson c "$single" '$a.events_ok + $b.events_ok + $c.requests_ok')
[[ $acked -ge $answered ]] || { echo "only $acked events in $topic for $answered answered 2xx" >&2; exit 1; }

bench_cleanup
trap - EXIT
bench_result publish "$(jq -cn --argjson kcat "$kcat_rate" --argjson kcat_acked "$kcat_acked" \
  --argjson events "$EVENTS" --argjson linger "$LINGER_MS" --argjson json "$json" --argjson pb "$pb" \
  --argjson single "$single" --argjson peak "${peak:-null}" --argjson target "$TARGET" \
  --argjson single_target "$SINGLE_TARGET" --argjson event_bytes "$event_bytes" \
  --argjson acked "$acked" --argjson batch $BATCH '
  {bench: "publish", unit: "events/s", linger_ms: $linger, event_bytes: $event_bytes,
   batch_events: $batch, kcat_events_per_s: $kcat, kcat_events_acked: $kcat_acked,
   kcat_events_sent: $events, target_ratio: $target,
   json_batch: $json, protobuf_batch: $pb,
   single: ($single + {target_req_per_s: $single_target}),
   broker_events_acked: $acked, broker_peak_rss_kb: $peak}')"
