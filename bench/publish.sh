#!/usr/bin/env bash
# Publish throughput of baton-broker into devkafka, against kcat producing the same events
# straight into the same devkafka with acks=all and idempotence, in the same run.
#  1. Batches of 100 events (~200 bytes each) over keep-alive HTTP connections (wrk),
#     about 1M events in all: target >= 0.5x kcat's event rate.
#  2. Single-event requests with 64 connections: target >= 30,000 req/s, with p50 and p99.
# The broker's peak RSS across the run is printed too. Last line: one JSON object.
source "$(dirname "$0")/lib.sh"
EVENTS=${BENCH_EVENTS:-1000000}
SINGLE_DURATION=${BENCH_SINGLE_DURATION:-10s}

bench_stack_up
tmp=$BENCH_RUN
topic=bench.publish
curl -fsS -X POST "$BATON_DEVKAFKA_CONTROL/topics" -d "{\"name\":\"$topic\",\"partitions\":6}" >/dev/null
curl -fsS -X POST "$BATON_DEVKAFKA_CONTROL/topics" -d "{\"name\":\"$topic.kcat\",\"partitions\":6}" >/dev/null

# One ~200-byte event, as JSON for us and as the raw value for kcat.
data='{"order_id":"ord-000001","customer":"c-42","amount_cents":12999,"currency":"EUR","items":3,"note":"benchmark payload padding........"}'
event() { printf '{"specversion":"1.0","id":"ev-%s","source":"/bench","type":"order.placed","subject":"order-%s","data":%s}' "$1" "$(( $1 % 1000 ))" "$data"; }
{ printf '['; for i in $(seq 1 100); do [[ $i -gt 1 ]] && printf ','; event "$i"; done; printf ']'; } >"$tmp/batch.json"
event 1 >"$tmp/single.json"
say "event size: $(event 1 | wc -c) bytes as JSON, value $(printf '%s' "$data" | wc -c) bytes"

# Baseline: kcat, acks=all, idempotent, same devkafka.
awk -v d="$data" -v n="$EVENTS" 'BEGIN { for (i = 0; i < n; i++) printf "order-%d|%s\n", i % 1000, d }' >"$tmp/kcat.in"
t0=$(now_ns)
kcat -P -b "$BATON_KAFKA_BROKERS" -t "$topic.kcat" -K '|' -X acks=all -X enable.idempotence=true \
  -X linger.ms=2 <"$tmp/kcat.in"
t1=$(now_ns)
kcat_rate=$(awk -v n="$EVENTS" -v ns=$((t1 - t0)) 'BEGIN { printf "%.0f", n / (ns / 1e9) }')
say "kcat: $EVENTS events in $(( (t1 - t0) / 1000000 )) ms = $kcat_rate events/s"

bport=$(free_port)
start_broker "$bport" "$tmp/broker.log" BATON_KAFKA_BROKERS="$BATON_KAFKA_BROKERS"
url="http://127.0.0.1:$bport/v1/topics/$topic/events"

# The same batch as a baton.v1.EventBatch, for the protobuf ingest mode.
cc -O2 -o "$tmp/gen_batch" "$ROOT/bench/gen_batch.c" "$BUILD/proto/baton/v1/event.pb-c.c" \
  -I"$BUILD/proto" -lprotobuf-c
"$tmp/gen_batch" 100 "$data" >"$tmp/batch.pb"

# 1. Batches of 100: run long enough for about $EVENTS events at kcat's pace, at least 5 s.
secs=$(awk -v n="$EVENTS" -v r="$kcat_rate" 'BEGIN { s = n / (r * 0.8); if (s < 5) s = 5; if (s > 60) s = 60; printf "%d", s }')
out=$(BENCH_BODY=$tmp/batch.json BENCH_CTYPE=application/cloudevents-batch+json \
  wrk -t1 -c16 -d"${secs}s" -s "$ROOT/bench/publish.lua" "$url" 2>&1)
echo "$out" | grep -E "Requests/sec|Non-2xx|Socket errors" >&2 || true
batch_rps=$(echo "$out" | awk '/^Requests\/sec:/ {print $2}')
batch_errors=$(echo "$out" | awk '/Non-2xx/ {print $5}')
ours=$(awk -v r="$batch_rps" 'BEGIN { printf "%.0f", r * 100 }')
total=$(echo "$out" | awk '/requests in/ {print $1 * 100}')
json_ours=$ours
say "baton JSON batches of 100: $json_ours events/s over $total events"
out=$(BENCH_BODY=$tmp/batch.pb BENCH_CTYPE=application/x-protobuf \
  wrk -t1 -c16 -d"${secs}s" -s "$ROOT/bench/publish.lua" "$url" 2>&1)
echo "$out" | grep -E "Requests/sec|Non-2xx|Socket errors" >&2 || true
pb_ours=$(echo "$out" | awk '/^Requests\/sec:/ {printf "%.0f", $2 * 100}')
pb_errors=$(echo "$out" | awk '/Non-2xx/ {print $5}')
say "baton protobuf batches of 100: $pb_ours events/s"
# The headline figure is the faster ingest mode; both are printed.
mode=protobuf; ours=$pb_ours
if (( json_ours > pb_ours )); then mode=json; ours=$json_ours; fi
r=$(ratio "$ours" "$kcat_rate")
say "best ($mode): $ours events/s; kcat $kcat_rate events/s; ratio $r (target >= 0.5)"

# 2. Single events, 64 connections.
out=$(BENCH_BODY=$tmp/single.json BENCH_CTYPE=application/cloudevents+json \
  wrk -t2 -c64 -d"$SINGLE_DURATION" --latency -s "$ROOT/bench/publish.lua" "$url" 2>&1)
echo "$out" | grep -E "Requests/sec|Non-2xx|Socket errors|50%|99%" >&2 || true
single_rps=$(echo "$out" | awk '/^Requests\/sec:/ {print $2}')
single_errors=$(echo "$out" | awk '/Non-2xx/ {print $5}')
to_ms() { awk -v v="$1" 'BEGIN { if (v ~ /us$/) { sub(/us/, "", v); v /= 1000 } else if (v ~ /ms$/) { sub(/ms/, "", v) } else if (v ~ /s$/) { sub(/s/, "", v); v *= 1000 } printf "%.2f", v }'; }
p50=$(to_ms "$(echo "$out" | awk '$1 == "50%" {print $2}')")
p99=$(to_ms "$(echo "$out" | awk '$1 == "99%" {print $2}')")
peak=$(hwm_kb "$BROKER_PID")
say "baton single events: $single_rps req/s (target >= 30000), p50 $p50 ms, p99 $p99 ms; broker peak RSS $peak kB"
printf '{"bench":"publish","ours":%s,"baseline":%s,"ratio":%s,"target":0.5,"unit":"events/s","ours_mode":"%s","json_batch_events_per_s":%s,"protobuf_batch_events_per_s":%s,"protobuf_non_2xx":%s,"json_batch_events_total":%s,"json_batch_non_2xx":%s,"single_req_per_s":%s,"single_target":30000,"single_p50_ms":%s,"single_p99_ms":%s,"single_non_2xx":%s,"broker_peak_rss_kb":%s}\n' \
  "$ours" "$kcat_rate" "$r" "$mode" "$json_ours" "$pb_ours" "${pb_errors:-0}" "${total:-0}" "${batch_errors:-0}" "$single_rps" "$p50" "$p99" "${single_errors:-0}" "$peak"
