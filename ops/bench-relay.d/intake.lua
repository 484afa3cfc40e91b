-- intake.lua: wrk script for tally-relay's usage intake (POST /v1/events).
-- Every request carries BENCH_BATCH valid ai.tokens usage events of the
-- key's tenant (one JSON object when the batch is 1, else a JSON array),
-- each with a unique id: run, wrk thread, the thread's request counter and
-- the index in the batch.
--
-- Each thread sends new requests for BENCH_SECONDS only, then waits (run
-- wrk with -d a few seconds longer): every request sent gets its answer, so
-- the events answered 202 can be compared exactly with the topic. The rate
-- is over the time from the first request to the last answer.
--
-- BENCH_RATE > 0 paces the load: requests/s over all threads (BENCH_THREADS
-- of them), each thread sending on a fixed schedule (open loop: a request
-- late for its slot goes out at once), so latency is measured below the
-- maximum rate. wrk's latency is from the request's first byte to the end
-- of its answer.
--
-- env: BENCH_KEY, BENCH_TENANT, BENCH_BATCH (100), BENCH_RUN (id prefix),
--      BENCH_SECONDS (10), BENCH_RATE (0: as fast as the connections go),
--      BENCH_THREADS (2)
local ffi = require("ffi")
local fmt, concat = string.format, table.concat

ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_ts;
int clock_gettime(int clk, bench_ts *ts);
]]
local ts = ffi.new("bench_ts")
local function now_ms()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local key = os.getenv("BENCH_KEY") or error("BENCH_KEY is not set")
local tenant = os.getenv("BENCH_TENANT") or error("BENCH_TENANT is not set")
local batch = tonumber(os.getenv("BENCH_BATCH") or "100")
local run = os.getenv("BENCH_RUN") or tostring(os.time())
local rate = tonumber(os.getenv("BENCH_RATE") or "0")
local nthreads = tonumber(os.getenv("BENCH_THREADS") or "2")
local path = os.getenv("BENCH_PATH") or "/v1/events"
local seconds = tonumber(os.getenv("BENCH_SECONDS") or "10")

local threads = {}
-- globals: setup()/done() reach a thread's globals only (thread:set/get)
tid, seq, ok, bad, bad_status, bad_body = 0, 0, 0, 0, 0, ""
t_first, t_last = 0, 0
local deadline
local headers = {
  ["Content-Type"] = "application/json",
  ["Authorization"] = "Bearer " .. key,
}
local head, tail

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  t_first = now_ms()
  deadline = t_first + seconds * 1000
  head = fmt('{"id":"%s-%d-', run, tid)
  tail = fmt('","source":"bench-relay","type":"ai.tokens","tenant_id":"%s",' ..
             '"time":%%d,"data":{"provider":"openai","model":"gpt-4o",' ..
             '"input_tokens":%%d,"output_tokens":%%d,"cache_read_tokens":0,' ..
             '"cache_write_tokens":0}}', tenant)
end

local ev = {}
function request()
  seq = seq + 1
  local t = os.time() * 1000
  for i = 1, batch do
    ev[i] = head .. seq .. "-" .. i .. fmt(tail, t, 1000 + i, 100 + seq % 500)
  end
  local body
  if batch == 1 then body = ev[1] else body = "[" .. concat(ev, ",", 1, batch) .. "]" end
  return wrk.format("POST", path, headers, body)
end

local interval = rate > 0 and 1000 * nthreads / rate -- ms between requests
local nxt
function delay()
  local now = now_ms()
  if now >= deadline then return 3600 * 1000 end -- no new request
  if not interval then return 0 end
  if nxt == nil then nxt = now end
  local slot = nxt
  nxt = nxt + interval
  if slot <= now then return 0 end
  return math.floor(slot - now)
end

function response(status, hdrs, body)
  t_last = now_ms()
  if status == 202 then
    ok = ok + 1
  else
    bad = bad + 1
    if bad_status == 0 then bad_status, bad_body = status, body:sub(1, 200) end
  end
end

function done(summary, latency, requests)
  local n202, nbad, st, sample = 0, 0, 0, ""
  local t0, t1 = math.huge, 0
  for _, th in ipairs(threads) do
    t0 = math.min(t0, th:get("t_first"))
    t1 = math.max(t1, th:get("t_last"))
    n202 = n202 + (th:get("ok") or 0)
    nbad = nbad + (th:get("bad") or 0)
    if st == 0 and (th:get("bad_status") or 0) ~= 0 then
      st, sample = th:get("bad_status"), th:get("bad_body")
    end
  end
  local secs = (t1 - t0) / 1000
  io.write(fmt("intake: %d requests, %d answered 202, %d other, %.0f events/s (202)\n",
               summary.requests, n202, nbad, n202 * batch / secs))
  if nbad > 0 then io.write(fmt("intake: first non-202: %d %s\n", st, sample)) end
  io.write(fmt("intake latency (ms): p50 %.2f  p90 %.2f  p99 %.2f  max %.2f\n",
               latency:percentile(50) / 1000, latency:percentile(90) / 1000,
               latency:percentile(99) / 1000, latency.max / 1000))
  io.write(fmt("BENCH_RESULT requests=%d ok=%d other=%d seconds=%.3f " ..
               "p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f max_ms=%.3f " ..
               "socket_errors=%d\n",
               summary.requests, n202, nbad, secs,
               latency:percentile(50) / 1000, latency:percentile(90) / 1000,
               latency:percentile(99) / 1000, latency.max / 1000,
               summary.errors.connect + summary.errors.read +
               summary.errors.write + summary.errors.timeout))
end
