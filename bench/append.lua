-- wrk script for bench/append.sh: one connection is one writer with one append of one ~200-byte
-- event in flight. Arguments (after --): MODE RUN POOL.
--   new       a new stream per request, expected_version "no_stream" (the headline figure)
--   existing  streams seeded by append.sh, expected_version "any"
--   numeric   other seeded streams, the exact current version as expected_version
--   hot       every request to one stream, expected_version "any"
-- Seeded streams are bench-<mode>-<k>; each wrk thread cycles through its own POOL of them,
-- far more than its connections, so one stream rarely has two appends in flight. The numeric
-- mode sends the version of the stream's last 201 answer (the seed: 1); when two appends do
-- overlap (a stalled group commit), one answers 409 and the next 201 puts the stream right.
-- Answers are counted by status in wrk_status.lua.
dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "wrk_status.lua")

function init(args)
  mode, run, pool = args[1], args[2], tonumber(args[3] or "1")
  n = 0
  versions = {}
  headers = { ["Content-Type"] = "application/json" }
  pad = string.rep("x", 96)
end

function request()
  n = n + 1
  local id = string.format("%s-%d-%d", run, tid, n)
  local stream, expected
  if mode == "new" then
    stream, expected = "bench-" .. id, '"no_stream"'
  elseif mode == "existing" or mode == "numeric" then
    local k = (tid - 1) * pool + (n - 1) % pool + 1
    stream = string.format("bench-%s-%d", mode, k)
    if mode == "numeric" then
      expected = tostring(versions[stream] or 1)
    else
      expected = '"any"'
    end
  elseif mode == "hot" then
    stream, expected = "bench-hot-" .. run, '"any"'
  else
    error("unknown mode " .. tostring(mode))
  end
  local body = string.format('{"expected_version":%s,"events":[{"specversion":"1.0",' ..
    '"id":"%s","source":"/bench/append","type":"bench.appended","data":{"n":%d,"pad":"%s"}}]}',
    expected, id, n, pad)
  return wrk.format("POST", "/v1/streams/" .. stream .. "/events", headers, body)
end

function on_response(status, headers, body)
  if mode == "numeric" and status == 201 then
    local stream, last = body:match('"stream":"([^"]*)".-"last_version":(%d+)')
    if stream then -- answers can overtake each other: keep the highest version seen
      versions[stream] = math.max(versions[stream] or 0, tonumber(last))
    end
  end
end
