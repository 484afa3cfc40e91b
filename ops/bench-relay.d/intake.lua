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
-- of them), each thread sending on a fixed schedule of slots (open loop: a
-- connection that becomes free claims the next slot; a request late for
-- its slot goes out at once), so latency is measured below the maximum
-- rate. wrk's latency is from the request's first byte to the end of its
-- answer, i.e. from the actual send. A request goes out late when every
-- connection of its thread was still waiting for an answer at its slot
-- (or the thread was off the cores): the script counts those sends and
-- their lag (send time - slot; slots are handed out in order and their
-- timers fire in order, so the n-th send of a thread belongs to its n-th
-- slot). With no late send, wrk's latency is also the latency from the
-- intended send time; with some, that latency is up to their lag longer.
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
-- pacing: sends, the first and last send, late sends and their lag (ms)
sent, s_first, s_last, late, lag_max, lag_sum = 0, 0, 0, 0, 0, 0
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

local interval = rate > 0 and 1000 * nthreads / rate -- ms between requests
local ev = {}
local slots, s_head, s_tail = {}, 1, 0 -- the claimed slots, oldest first
function request()
  seq = seq + 1
  if interval then
    local now = now_ms()
    if sent == 0 then s_first = now end
    sent, s_last = sent + 1, now
    if s_head <= s_tail then
      local lag = now - slots[s_head]
      slots[s_head] = nil
      s_head = s_head + 1
      if lag >= 2 then -- timers have a resolution of 1 ms
        late, lag_sum = late + 1, lag_sum + lag
        if lag > lag_max then lag_max = lag end
      end
    end
  end
  local t = os.time() * 1000
  for i = 1, batch do
    ev[i] = head .. seq .. "-" .. i .. fmt(tail, t, 1000 + i, 100 + seq % 500)
  end
  local body
  if batch == 1 then body = ev[1] else body = "[" .. concat(ev, ",", 1, batch) .. "]" end
  return wrk.format("POST", path, headers, body)
end

local nxt
function delay()
  local now = now_ms()
  if now >= deadline then return 3600 * 1000 end -- no new request
  if not interval then return 0 end
  if nxt == nil then nxt = now end
  local slot = nxt
  nxt = nxt + interval
  s_tail = s_tail + 1
  slots[s_tail] = slot
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
  local nsent, nlate, lmax, lsum, send_rate = 0, 0, 0, 0, 0
  for _, th in ipairs(threads) do
    t0 = math.min(t0, th:get("t_first"))
    t1 = math.max(t1, th:get("t_last"))
    local n, f, l = th:get("sent") or 0, th:get("s_first"), th:get("s_last")
    nsent, nlate = nsent + n, nlate + (th:get("late") or 0)
    lmax = math.max(lmax, th:get("lag_max") or 0)
    lsum = lsum + (th:get("lag_sum") or 0)
    -- each thread's rate over its sending window (one interval per send)
    if n > 1 and l > f then send_rate = send_rate + (n - 1) * 1000 / (l - f) end
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
  if interval then
    io.write(fmt("intake pacing: target %.1f requests/s, sent %.1f requests/s; " ..
                 "%d of %d sends >= 2 ms after their slot (max lag %.1f ms)\n",
                 rate, send_rate, nlate, nsent, lmax))
  end
  io.write(fmt("BENCH_PACING target_rps=%.1f sent_rps=%.1f sent=%d late=%d " ..
               "lag_max_ms=%.1f lag_mean_ms=%.1f\n", rate, send_rate, nsent,
               nlate, lmax, nlate > 0 and lsum / nlate or 0))
  io.write(fmt("BENCH_RESULT requests=%d ok=%d other=%d seconds=%.3f " ..
               "p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f max_ms=%.3f " ..
               "socket_errors=%d\n",
               summary.requests, n202, nbad, secs,
               latency:percentile(50) / 1000, latency:percentile(90) / 1000,
               latency:percentile(99) / 1000, latency.max / 1000,
               summary.errors.connect + summary.errors.read +
               summary.errors.write + summary.errors.timeout))
end
