# Shared helpers for the benchmarks: a private stack with default durability, service start-up
# with timing, and the JSON summary line. Sourced by bench/*.sh; not run on its own.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BATON_BUILD_DIR:-$ROOT/build}
BENCH_PIDS=()

say() { printf '== %s\n' "$*" >&2; }

now_ns() { date +%s%N; }

# Builds if a binary is missing, then starts Postgres, Redis and devkafka in a temp run dir.
# Benchmarks keep Postgres's default durability (fsync on, synchronous_commit on).
bench_stack_up() {
  [[ -x "$BUILD/broker/baton-broker" && -x "$BUILD/devkafka/baton-devkafka" ]] || (cd "$ROOT" && ./dev build >&2)
  BENCH_RUN=$(mktemp -d /tmp/baton-bench.XXXXXX)
  export BATON_DEV_RUN_DIR=$BENCH_RUN BATON_DEV_AUTO_PORTS=1 BATON_DEV_FAST_PG=0 BATON_BUILD_DIR=$BUILD
  (cd "$ROOT" && ./dev stack-up >&2)
  set -a
  # shellcheck disable=SC1091
  source "$BENCH_RUN/env"
  set +a
  trap bench_cleanup EXIT
}

bench_cleanup() {
  for pid in "${BENCH_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${BENCH_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [[ -n "${BENCH_RUN:-}" ]]; then
    (cd "$ROOT" && BATON_DEV_RUN_DIR=$BENCH_RUN ./dev stack-down >/dev/null 2>&1) || true
    rm -rf "$BENCH_RUN"
  fi
}

free_port() {
  local p
  for p in $(shuf -i 20000-45000 -n 50); do
    (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null || { echo "$p"; return; }
  done
  return 1
}

# http_status PORT PATH: the status of one GET over bash's /dev/tcp (no fork per attempt).
http_status() {
  local line
  exec 3<>/dev/tcp/127.0.0.1/"$1" || return 1
  printf 'GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' "$2" >&3
  read -r -t 2 line <&3 || true
  exec 3<&- 3>&-
  line=${line#HTTP/1.1 }
  echo "${line%% *}"
}

# start_broker PORT LOG [ENV=VALUE...]: starts baton-broker; sets BROKER_PID and READY_MS
# (exec to the first /readyz 200, polled every millisecond).
start_broker() {
  local port=$1 log=$2
  shift 2
  local t0 t1
  t0=$(now_ns)
  env "$@" BATON_HTTP_PORT="$port" BATON_LOG_LEVEL=warn "$BUILD/broker/baton-broker" >"$log" 2>&1 &
  BROKER_PID=$!
  BENCH_PIDS+=("$BROKER_PID")
  for _ in $(seq 1 20000); do
    [[ "$(http_status "$port" /readyz 2>/dev/null)" == 200 ]] && break
    sleep 0.001
  done
  t1=$(now_ns)
  READY_MS=$(( (t1 - t0) / 1000000 ))
}

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }

# wrk_rate ARGS...: runs wrk and prints requests/second.
wrk_rate() { wrk "$@" 2>&1 | awk '/^Requests\/sec:/ {print $2}'; }

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "null" }'; }
