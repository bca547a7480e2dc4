-- wrk script for bench/read.sh: GETs of the projector's read API with a bearer token, each on
-- a random customer or invoice of the data set read_fill.c wrote. Arguments (after --):
-- MODE (index | key) INVOICES CUSTOMERS TOKEN. Answers are counted by status (wrk_status.lua);
-- a 404 would mean the data set and the reads disagree, and counts as non-2xx.
dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "wrk_status.lua")

function init(args)
  mode, ninv, ncust = args[1], tonumber(args[2]), tonumber(args[3])
  headers = { ["Authorization"] = "Bearer " .. args[4] }
  math.randomseed(tid * 7919)
end

function request()
  local path
  if mode == "index" then
    path = string.format("/v1/projections/invoices?index=unpaid_by_due&value=cust-%06d",
      math.random(1, ncust))
  else
    path = string.format("/v1/projections/invoices/inv-%010d", math.random(1, ninv))
  end
  return wrk.format("GET", path, headers)
end
