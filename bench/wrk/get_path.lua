-- GET BENCH_PATH (a page of messages, a conversation list, /health), with
-- the optional BENCH_USER as the User-Id header.
dofile(os.getenv("BENCH_DIR") .. "/wrk/common.lua")
wrk.method = "GET"
wrk.path = os.getenv("BENCH_PATH")
local user = os.getenv("BENCH_USER")
if user and user ~= "" then
  wrk.headers["User-Id"] = user
end
