-- wrk script for bench/saga.sh: each request starts one checkout saga. Arguments (after --):
-- PATH DELAY_MS. PATH is /v1/sagas/<type>, with ?wait=... when the answer should come once the
-- saga ends (then latency is start to COMPLETED); DELAY_MS paces each connection (0: none).
-- Answers are counted by status in wrk_status.lua: with ?wait, only a 200 is a saga that
-- ended within the wait.
dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "wrk_status.lua")

function init(args)
  path = args[1]
  pause = tonumber(args[2] or "0")
  n = 0
  headers = { ["Content-Type"] = "application/json" }
end

function request()
  n = n + 1
  local body = string.format('{"sku":"sku-%d","quantity":1,"amount":%d}', tid, n)
  return wrk.format("POST", path, headers, body)
end

function delay()
  return pause
end
