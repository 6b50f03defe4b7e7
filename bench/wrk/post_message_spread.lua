-- POST messages spread uniformly over BENCH_SPREAD_FIRST..BENCH_SPREAD_LAST,
-- conversations that all include BENCH_USER.
dofile(os.getenv("BENCH_DIR") .. "/wrk/common.lua")
local first = tonumber(os.getenv("BENCH_SPREAD_FIRST"))
local last = tonumber(os.getenv("BENCH_SPREAD_LAST"))
local user = os.getenv("BENCH_USER")
local body = '{"content": "a benchmark message"}'

request = function()
  local path = "/conversations/" .. math.random(first, last) .. "/messages"
  return wrk.format("POST", path, {["Content-Type"] = "application/json", ["User-Id"] = user}, body)
end
