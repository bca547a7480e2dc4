#!/usr/bin/env bash
# bench/relay.sh: the outbox relay's latency, from the moment an append is due to be sent to
# the record being readable in Kafka, at half of the maximum append rate (measured first, in
# the same run), on an open-loop schedule: latency counts from each request's scheduled time,
# so a client that falls behind shows as latency (no coordinated omission), and nothing is
# clamped.
#
# Baseline, in the same run and with the same consumer: records produced straight into the same
# devkafka at the same rate by a producer configured as the broker's (idempotent, acks=all, the
# same linger, BENCH_LINGER_MS, given to both), timed the same way. That is the Kafka hop alone,
# which any relay pays on top of reading Postgres; ratio = our p99 / the baseline's p99 says how
# much the relay adds to it.
# Target: p99 < 50 ms.
#
# It starts its own stack (Postgres with its default durability: fsync and synchronous_commit
# on; Redis; baton-devkafka) in .run-bench-relay/ and one broker with default settings, and
# stops them at the end. The last line is one JSON object.
#
# devkafka sets TCP_NODELAY on its broker sockets as a real Kafka broker does
# (devkafka/nodelay.c); without it every produce spanning several partitions of one broker
# would wait up to 40 ms for a delayed ACK.
#
# usage: bench/relay.sh [SECS (10)] [THREADS (64)]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
SECS=${1:-10}
THREADS=${2:-64}
MAXSECS=${BENCH_MAXSECS:-3}
LINGER_MS=${BENCH_LINGER_MS:-0}
BUILD=${BATON_BUILD_DIR:-$ROOT/build}
RUN=$ROOT/.run-bench-relay
say() { printf '==> %s\n' "$*" >&2; }

say "building in $BUILD"
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$BUILD" -j"$(nproc)" --target baton-broker baton-devkafka >/dev/null
mkdir -p "$BUILD/bench"
# shellcheck disable=SC2046
cc -O2 -Wall -Wextra -o "$BUILD/bench/relay_load" "$ROOT/bench/relay_load.c" \
  $(pkg-config --cflags --libs rdkafka) -lpthread

export BATON_DEV_RUN_DIR=$RUN BATON_DEV_AUTO_PORTS=1 BATON_DEV_FAST_PG=0 BATON_DEV_PG_FRESH=1 \
  BATON_BUILD_DIR=$BUILD BATON_DEV_KAFKA_TOPICS=bench.events:8,benchmax.events:8,benchbase.events:8
BROKER_PID=
cleanup() {
  if [[ -n "$BROKER_PID" ]]; then
    kill -TERM "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
  fi
  "$ROOT/dev" stack-down >/dev/null 2>&1 || true
}
trap cleanup EXIT
"$ROOT/dev" stack-up
set -a
# shellcheck disable=SC1091
. "$RUN/env"
set +a

PSQL=("$BATON_DEV_PG_BIN/psql" -X -qtA "$BATON_PG_DSN")
DURABILITY="fsync=$("${PSQL[@]}" -c 'SHOW fsync'),synchronous_commit=$("${PSQL[@]}" -c 'SHOW synchronous_commit')"
say "postgres durability: $DURABILITY"

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL=http://127.0.0.1:$PORT
env BATON_HTTP_PORT="$PORT" BATON_LOG_LEVEL=warn BATON_KAFKA_LINGER="${LINGER_MS}ms" \
  "$BUILD/broker/baton-broker" \
  </dev/null >"$RUN/broker-bench.log" 2>&1 &
BROKER_PID=$!
for _ in $(seq 300); do
  [[ "$(curl -s -o /dev/null -w '%{http_code}' "$URL/readyz")" == 200 ]] && break
  sleep 0.1
done
[[ "$(curl -s -o /dev/null -w '%{http_code}' "$URL/readyz")" == 200 ]] || {
  tail -n 20 "$RUN/broker-bench.log" >&2
  echo "broker not ready" >&2
  exit 1
}
# Warm up: the producer learns both topics' metadata before anything is timed.
for s in bench-warm benchmax-warm; do
  curl -s -o /dev/null -XPOST "$URL/v1/streams/$s/events" -H 'Content-Type: application/json' \
    -d '{"expected_version":"any","events":[{"specversion":"1.0","id":"warm","source":"/bench","type":"warm"}]}'
done
sleep 2

say "load: ${MAXSECS}s closed loop for the maximum append rate, then ${SECS}s at half of it, $THREADS connections"
OUT=$("$BUILD/bench/relay_load" "$URL" "$BATON_KAFKA_BROKERS" bench.events benchbase.events \
  "$MAXSECS" "$SECS" "$THREADS" "$LINGER_MS")
printf '%s\n' "$OUT" >&2
RSS_KB=$(awk '/^VmHWM:/ {print $2}' "/proc/$BROKER_PID/status" 2>/dev/null || echo 0)
PUBLISHED=$(curl -s "$URL/metrics" | awk '/^baton_broker_relay_published_total\{relay="store"\}/ {print $2}')

get() { printf '%s\n' "$OUT" | awk -v k="$1" '$1 == k {print $2}'; }
P50=$(get relay_p50_ms) P99=$(get relay_p99_ms) BP50=$(get baseline_p50_ms) BP99=$(get baseline_p99_ms)
MISSING=$(get relay_missing)
RATIO=$(awk -v a="$P99" -v b="$BP99" 'BEGIN { if (a != "null" && b > 0) printf "%.2f", a / b; else print "null" }')
MEETS=$(awk -v a="$P99" 'BEGIN { print (a != "null" && a < 50) ? "true" : "false" }')
printf '{"bench":"relay","ours":%s,"baseline":%s,"ratio":%s,"target":50,"unit":"ms (p99, append due -> readable in Kafka, open loop)","p50":%s,"p99":%s,"max_ms":%s,"baseline_p50":%s,"baseline_p99":%s,"rate_per_s":%s,"max_append_rate_per_s":%s,"events":%s,"append_failed":%s,"not_seen":%s,"negative_latencies":%s,"baseline_negative_latencies":%s,"relay_published":%s,"linger_ms":%s,"append_p50":%s,"append_p99":%s,"after_ack_p50":%s,"after_ack_p99":%s,"broker_peak_rss_kb":%s,"postgres":"%s","meets_target":%s}\n' \
  "$P99" "$BP99" "$RATIO" "$P50" "$P99" "$(get relay_max_ms)" "$BP50" "$BP99" "$(get rate)" \
  "$(get max_append_rate)" "$(get appended)" "$(get append_failed)" "${MISSING:-null}" \
  "$(get relay_negative_latencies)" "$(get baseline_negative_latencies)" "${PUBLISHED:-null}" \
  "$LINGER_MS" "$(get append_p50_ms)" "$(get append_p99_ms)" "$(get after_ack_p50_ms)" \
  "$(get after_ack_p99_ms)" "${RSS_KB:-0}" "$DURABILITY" "$MEETS"
