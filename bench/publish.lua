-- wrk script for bench/publish.sh: POSTs the body in $BENCH_BODY with $BENCH_CTYPE, and counts
-- the answers by status (wrk_status.lua): only 2xx answers count as published.
dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "wrk_status.lua")

wrk.method = "POST"
wrk.headers["Content-Type"] = os.getenv("BENCH_CTYPE")
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.body = f:read("*a")
f:close()
