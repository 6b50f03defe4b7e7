-- Shared by every scenario: print one JSON line of results for bench/run.py.
-- wrk counts non-2xx/3xx answers; we count 4xx and 5xx ourselves so a 400
-- (a bench bug) and a 503 (an overloaded service) are both visible.
local errors_4xx, errors_5xx = 0, 0
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  bad4, bad5 = 0, 0
end

function response(status, headers, body)
  if status >= 500 then
    bad5 = bad5 + 1
  elseif status >= 400 then
    bad4 = bad4 + 1
  end
end

function done(summary, latency, requests)
  for _, thread in ipairs(threads) do
    errors_4xx = errors_4xx + thread:get("bad4")
    errors_5xx = errors_5xx + thread:get("bad5")
  end
  local seconds = summary.duration / 1e6
  io.write(string.format(
    'WRK_JSON {"requests": %d, "seconds": %.3f, "rps": %.1f, "p50_ms": %.2f, "p99_ms": %.2f, "max_ms": %.2f, ' ..
    '"errors_connect": %d, "errors_read": %d, "errors_write": %d, "errors_timeout": %d, "errors_4xx": %d, "errors_5xx": %d}\n',
    summary.requests, seconds, summary.requests / seconds,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000,
    summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.timeout,
    errors_4xx, errors_5xx))
end
