-- wrk script: replays pre-signed Sinch callbacks from a file, each exactly once.
-- File format: one request per line, "x-timestamp<TAB>authorization<TAB>body".
-- Arguments: <file> <threads> <marker prefix>. Each wrk thread takes every n-th line;
-- when its last answer arrives it notes the time and writes <marker prefix><id>, so
-- that bench/run.py can stop wrk at once (SIGINT) instead of waiting out -d.

local threads = {}
local counter = 0

local function now_us()
  local f = io.popen("date +%s%6N")
  local t = f:read("*n")
  f:close()
  return t
end

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  local nthreads = tonumber(args[2])
  marker = args[3]
  queue = {}
  local i = 0
  for line in io.lines(args[1]) do
    if i % nthreads == id then
      local ts, auth, body = line:match("^([^\t]*)\t([^\t]*)\t(.*)$")
      queue[#queue + 1] = wrk.format("POST", "/sinch/callback", {
        ["Content-Type"] = "application/json; charset=utf-8",
        ["x-timestamp"] = ts,
        ["Authorization"] = auth,
      }, body)
    end
    i = i + 1
  end
  sent, received, bad, finished = 0, 0, 0, false
  t_start = now_us()
  t_end = 0
end

function request()
  sent = sent + 1
  return queue[math.min(sent, #queue)]
end

function response(status, headers, body)
  if finished then return end
  received = received + 1
  if status ~= 200 then bad = bad + 1 end
  if received >= #queue then
    finished = true
    t_end = now_us()
    local f = io.open(marker .. id, "w")
    f:write("done")
    f:close()
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local first, last, count, nbad = nil, 0, 0, 0
  for _, t in ipairs(threads) do
    local s, e = t:get("t_start"), t:get("t_end")
    if first == nil or s < first then first = s end
    if e > last then last = e end
    count = count + t:get("received")
    nbad = nbad + t:get("bad")
  end
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"errors_connect":%d,"errors_read":%d,"errors_write":%d,"errors_timeout":%d,"bad":%d}\n',
    count, last - first, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.timeout, nbad))
end
