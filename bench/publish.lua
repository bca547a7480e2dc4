-- wrk script for bench/publish.sh: POSTs the body in $BENCH_BODY with $BENCH_CTYPE.
wrk.method = "POST"
wrk.headers["Content-Type"] = os.getenv("BENCH_CTYPE")
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.body = f:read("*a")
f:close()
