#!/usr/bin/env bash
# HTTP serving speed and footprint of baton-broker.
#  - wrk against GET /healthz of baton-broker, and with the same wrk settings against Debian's
#    nginx (one worker, like our one loop) returning a fixed 200: target >= 0.8x nginx.
#  - Idle RSS of baton-broker (target < 8 MB) and exec-to-/readyz time with the stack up
#    (target < 100 ms): ready_ms is a start on a database that has the schema, as every start
#    but the first is; ready_first_start_ms is the very first, on an empty database, which
#    applies the whole schema (with fsync on) before /readyz. Until this split, ready_ms was
#    the first start's figure.
# The last line is one JSON object with the figures.
source "$(dirname "$0")/lib.sh"
DURATION=${BENCH_DURATION:-8s}
CONNS=${BENCH_CONNS:-64}

bench_stack_up
tmp=$BENCH_RUN

# ready_broker LOG: starts the broker on a free port (bport), again on another one if the port
# was taken between the pick and the bind, and checks /readyz.
ready_broker() {
  for _ in 1 2 3; do
    bport=$(free_port)
    start_broker "$bport" "$1" BATON_KAFKA_BROKERS="$BATON_KAFKA_BROKERS" BATON_PG_DSN="$BATON_PG_DSN"
    kill -0 "$BROKER_PID" 2>/dev/null && break
  done
  [[ "$(http_status "$bport" /readyz)" == 200 ]] || { cat "$1" >&2; echo "broker not ready" >&2; exit 1; }
}

ready_broker "$tmp/broker0.log"
ready_first_ms=$READY_MS
kill "$BROKER_PID"
wait "$BROKER_PID" || true
ready_broker "$tmp/broker.log"
ready_ms=$READY_MS
sleep 1
idle_rss_kb=$(rss_kb "$BROKER_PID")
# RSS counts every resident page of the shared libraries too (libc, librdkafka, libcrypto,
# gnutls via libpq...), which other processes share; PSS and private dirty show our own cost.
idle_pss_kb=$(awk '/^Pss:/ {print $2}' "/proc/$BROKER_PID/smaps_rollup")
idle_private_kb=$(awk '/^Private_Dirty:/ {print $2}' "/proc/$BROKER_PID/smaps_rollup")
say "baton-broker ready in ${ready_ms} ms (first start, schema applied: ${ready_first_ms} ms), idle RSS ${idle_rss_kb} kB (PSS ${idle_pss_kb} kB, private dirty ${idle_private_kb} kB)"

nport=$(free_port)
cat >"$tmp/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $tmp/nginx.pid;
error_log $tmp/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  server {
    listen 127.0.0.1:$nport;
    location / { default_type application/json; return 200 '{"status":"ok"}'; }
  }
}
NGINX
nginx -c "$tmp/nginx.conf" -p "$tmp" &
BENCH_PIDS+=($!)
for _ in $(seq 1 200); do [[ "$(http_status "$nport" /healthz 2>/dev/null)" == 200 ]] && break; sleep 0.02; done

wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$bport/healthz" >/dev/null 2>&1   # warm-up
wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$nport/healthz" >/dev/null 2>&1
ours=$(wrk_rate -t1 -c"$CONNS" -d"$DURATION" "http://127.0.0.1:$bport/healthz")
base=$(wrk_rate -t1 -c"$CONNS" -d"$DURATION" "http://127.0.0.1:$nport/healthz")
r=$(ratio "$ours" "$base")
loaded_rss_kb=$(hwm_kb "$BROKER_PID")
say "baton-broker /healthz: $ours req/s; nginx: $base req/s; ratio $r (target >= 0.8)"
say "peak RSS under load ${loaded_rss_kb} kB"
printf '{"bench":"http","ours":%s,"baseline":%s,"ratio":%s,"target":0.8,"unit":"req/s","wrk":"-t1 -c%s -d%s","idle_rss_kb":%s,"idle_rss_target_kb":8192,"idle_pss_kb":%s,"idle_private_dirty_kb":%s,"peak_rss_kb":%s,"ready_ms":%s,"ready_first_start_ms":%s,"ready_target_ms":100}\n' \
  "$ours" "$base" "$r" "$CONNS" "$DURATION" "$idle_rss_kb" "$idle_pss_kb" "$idle_private_kb" "$loaded_rss_kb" "$ready_ms" "$ready_first_ms"
