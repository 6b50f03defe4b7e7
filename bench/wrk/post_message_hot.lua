-- POST a message to one hot conversation. BENCH_CONVERSATION and BENCH_USER
-- come from the environment (set by bench/run.py).
dofile(os.getenv("BENCH_DIR") .. "/wrk/common.lua")
local conversation = os.getenv("BENCH_CONVERSATION")
wrk.method = "POST"
wrk.path = "/conversations/" .. conversation .. "/messages"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["User-Id"] = os.getenv("BENCH_USER")
wrk.body = '{"content": "a benchmark message"}'
