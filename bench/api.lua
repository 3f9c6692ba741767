-- wrk script of bench/api.py: GET args[1] with "{user}" replaced by a random user id
-- 1..args[2], with the bearer token args[3]; count the responses that are not 2xx, and
-- print one parseable result line.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("id", #threads)
end

function init(args)
  template = args[1]
  users = tonumber(args[2])
  headers = {["Authorization"] = "Bearer " .. args[3]}
  non2xx = 0 -- a global, so that done() can read it from each thread
  math.randomseed(os.time() * 1000 + id) -- each thread its own sequence
end

function request()
  local path = template:gsub("{user}", tostring(math.random(users)))
  return wrk.format("GET", path, headers)
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
end

function done(summary, latency, requests)
  local bad = 0
  for _, thread in ipairs(threads) do
    bad = bad + thread:get("non2xx")
  end
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, ' ..
    '"non2xx": %d, "socket_errors": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    bad, e.connect + e.read + e.write + e.timeout))
end
