-- A chat's day: users poll the tail of their conversation and post now and then.
-- Each request picks one of BENCH_CHAT_COUNT conversations (ids from
-- BENCH_CHAT_FIRST; conversation i is between users BENCH_CHAT_FIRST_USER + 2i
-- and + 2i + 1) and one of its two participants, who sends their User-Id.
-- One request in BENCH_POST_EVERY is a post; the others read the messages after
-- the last few the client has seen (after_index near the conversation's end:
-- BENCH_CHAT_BASE, the lowest last index when the run began, plus the posts this
-- run made there).
dofile(os.getenv("BENCH_DIR") .. "/wrk/common.lua")
local first = tonumber(os.getenv("BENCH_CHAT_FIRST"))
local first_user = tonumber(os.getenv("BENCH_CHAT_FIRST_USER"))
local count = tonumber(os.getenv("BENCH_CHAT_COUNT"))
local base = tonumber(os.getenv("BENCH_CHAT_BASE"))
local post_every = tonumber(os.getenv("BENCH_POST_EVERY"))
local body = '{"content": "a chat message"}'
local posted = {}

request = function()
  local i = math.random(0, count - 1)
  local conversation = first + i
  local user = tostring(first_user + 2 * i + math.random(0, 1))
  local path = "/conversations/" .. conversation .. "/messages"
  if math.random(1, post_every) == 1 then
    posted[i] = (posted[i] or 0) + 1
    return wrk.format("POST", path, {["Content-Type"] = "application/json", ["User-Id"] = user}, body)
  end
  local after = math.max(0, base + (posted[i] or 0) - math.random(0, 3))
  return wrk.format("GET", path .. "?after_index=" .. after, {["User-Id"] = user})
end
