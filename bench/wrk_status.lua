-- Counting answers by status for the benchmarks' wrk scripts (loaded with dofile by
-- publish.lua and append.lua). wrk's own "Requests/sec" counts every answer, 429s and 503s
-- included, so a broker that refuses work fast would look fast. Here each thread counts the
-- statuses it saw, and done() prints one line for the shell script:
--   WRK_JSON {"ok":N,"non_2xx":M,"statuses":{"201":N,...},"seconds":S,"p50_ms":..,"p99_ms":..,
--             "socket_errors":{...}}
-- "ok" counts 2xx answers only; throughput is ok / seconds. Latency percentiles are wrk's,
-- over every answer.
-- A script may define on_response(status, headers, body) to look at answers too; each
-- thread gets a number `tid` (1..threads) before init().

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

-- One table per thread (each thread runs the script in its own Lua state).
statuses = {}

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if on_response then
    on_response(status, headers, body)
  end
end

function done(summary, latency, requests)
  local by, ok, other = {}, 0, 0
  for _, t in ipairs(threads) do
    for s, n in pairs(t:get("statuses")) do
      by[s] = (by[s] or 0) + n
      if s >= 200 and s < 300 then ok = ok + n else other = other + n end
    end
  end
  local parts = {}
  for s, n in pairs(by) do
    table.insert(parts, string.format('"%d":%d', s, n))
  end
  table.sort(parts)
  local e = summary.errors
  io.write(string.format('WRK_JSON {"ok":%d,"non_2xx":%d,"statuses":{%s},"seconds":%.3f,' ..
    '"p50_ms":%.3f,"p99_ms":%.3f,"socket_errors":{"connect":%d,"read":%d,"write":%d,' ..
    '"timeout":%d}}\n', ok, other, table.concat(parts, ","), summary.duration / 1e6,
    latency:percentile(50) / 1e3, latency:percentile(99) / 1e3, e.connect, e.read, e.write,
    e.timeout))
end
