-- bench-relay.lua: wrk script for tally-relay. Every request is a unique
-- Stripe-like event (~BENCH_BODY_BYTES bytes), signed with the current
-- timestamp exactly as Stripe does: v1 = hex HMAC-SHA256(secret, "<t>." .. body).
-- Pure LuaJIT (wrk's Lua has no crypto): SHA-256 on the `bit` library,
-- with the HMAC inner/outer pad blocks hashed once per thread.
--
-- env: STRIPE_WEBHOOK_SECRET, BENCH_PATH (default /webhooks/stripe),
--      BENCH_BODY_BYTES (default 1024)
local bit = require("bit")
local band, bor, bxor, bnot = bit.band, bit.bor, bit.bxor, bit.bnot
local rshift, lshift, ror, tobit, tohex = bit.rshift, bit.lshift, bit.ror,
                                          bit.tobit, bit.tohex
local byte, char, rep, fmt = string.byte, string.char, string.rep, string.format

local K = {
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1,
  0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3,
  0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
  0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147,
  0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
  0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
  0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
  0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208,
  0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
}
for i = 1, 64 do K[i] = tobit(K[i]) end
local IV = { 0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
             0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19 }
for i = 1, 8 do IV[i] = tobit(IV[i]) end

local W = {}
local function compress(H, s, off)
  for i = 0, 15 do
    local a, b, c, d = byte(s, off + i * 4, off + i * 4 + 3)
    W[i] = bor(lshift(a, 24), lshift(b, 16), lshift(c, 8), d)
  end
  for i = 16, 63 do
    local w15, w2 = W[i - 15], W[i - 2]
    local s0 = bxor(ror(w15, 7), ror(w15, 18), rshift(w15, 3))
    local s1 = bxor(ror(w2, 17), ror(w2, 19), rshift(w2, 10))
    W[i] = tobit(W[i - 16] + s0 + W[i - 7] + s1)
  end
  local a, b, c, d, e, f, g, h = H[1], H[2], H[3], H[4], H[5], H[6], H[7], H[8]
  for i = 0, 63 do
    local S1 = bxor(ror(e, 6), ror(e, 11), ror(e, 25))
    local ch = bxor(band(e, f), band(bnot(e), g))
    local t1 = tobit(h + S1 + ch + K[i + 1] + W[i])
    local S0 = bxor(ror(a, 2), ror(a, 13), ror(a, 22))
    local maj = bxor(band(a, b), band(a, c), band(b, c))
    h, g, f, e, d, c, b, a = g, f, e, tobit(d + t1), c, b, a, tobit(t1 + S0 + maj)
  end
  H[1] = tobit(H[1] + a); H[2] = tobit(H[2] + b); H[3] = tobit(H[3] + c)
  H[4] = tobit(H[4] + d); H[5] = tobit(H[5] + e); H[6] = tobit(H[6] + f)
  H[7] = tobit(H[7] + g); H[8] = tobit(H[8] + h)
end

-- finish a hash whose first `done` bytes (a multiple of 64) gave state H0
local function finish(H0, done, msg)
  local H = { H0[1], H0[2], H0[3], H0[4], H0[5], H0[6], H0[7], H0[8] }
  local bits = (done + #msg) * 8
  local pad = 64 - ((#msg + 9) % 64)
  if pad == 64 then pad = 0 end
  local hi = math.floor(bits / 4294967296)
  local m = msg .. "\128" .. rep("\0", pad) ..
            char(band(rshift(hi, 24), 255), band(rshift(hi, 16), 255),
                 band(rshift(hi, 8), 255), band(hi, 255)) ..
            char(band(rshift(bits, 24), 255), band(rshift(bits, 16), 255),
                 band(rshift(bits, 8), 255), band(bits, 255))
  for off = 1, #m, 64 do compress(H, m, off) end
  return H
end

local function words_bin(H)
  local t = {}
  for i = 1, 8 do
    local x = H[i]
    t[i] = char(band(rshift(x, 24), 255), band(rshift(x, 16), 255),
                band(rshift(x, 8), 255), band(x, 255))
  end
  return table.concat(t)
end

local function words_hex(H)
  local t = {}
  for i = 1, 8 do t[i] = tohex(H[i]) end
  return table.concat(t)
end

local function pad_state(key, x)
  local t = {}
  for i = 1, 64 do t[i] = char(bxor(byte(key, i) or 0, x)) end
  local H = { IV[1], IV[2], IV[3], IV[4], IV[5], IV[6], IV[7], IV[8] }
  compress(H, table.concat(t), 1)
  return H
end

local secret = os.getenv("STRIPE_WEBHOOK_SECRET") or "whsec_test_local_secret"
if #secret > 64 then secret = words_bin(finish(IV, 0, secret)) end
local inner, outer = pad_state(secret, 0x36), pad_state(secret, 0x5c)

local function hmac_hex(msg)
  return words_hex(finish(outer, 64, words_bin(finish(inner, 64, msg))))
end

-- self-check against a vector from `openssl dgst -sha256 -hmac`
do
  local i0, o0 = inner, outer
  inner, outer = pad_state("whsec_test_secret", 0x36), pad_state("whsec_test_secret", 0x5c)
  local got = hmac_hex('1700000000.{"id":"evt_1","object":"event","type":"invoice.paid"}')
  assert(got == "dfb4777aaaec4ea29ff455dd4df7fe6b2ef71096ad3a93a158db7e100109ea91",
         "HMAC self-check failed: " .. got)
  inner, outer = i0, o0
end

local path = os.getenv("BENCH_PATH") or "/webhooks/stripe"
local body_bytes = tonumber(os.getenv("BENCH_BODY_BYTES") or "1024")
local threads = {}
-- globals, not locals: setup() sets tid and done() reads non200 through
-- thread:set/get, which see only a thread's globals
tid, seq, non200 = 0, 0, 0
local filler

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(os.time() + tid)
  filler = nil
end

function request()
  seq = seq + 1
  local t = os.time()
  local head = fmt('{"id":"evt_bench_%d_%d_%d","object":"event","api_version":"2024-06-20",' ..
                   '"created":%d,"type":"invoice.paid","livemode":false,' ..
                   '"data":{"object":{"id":"in_bench_%d","object":"invoice",' ..
                   '"customer":"cus_bench_%d","amount_paid":2000,"currency":"usd",' ..
                   '"description":"', t, tid, seq, t, seq, seq % 1000)
  if filler == nil then
    filler = rep("x", math.max(0, body_bytes - #head - 4))
  end
  local body = head .. filler .. '"}}}'
  local sig = "t=" .. t .. ",v1=" .. hmac_hex(t .. "." .. body)
  return wrk.format("POST", path, {
    ["Content-Type"] = "application/json; charset=utf-8",
    ["Stripe-Signature"] = sig,
  }, body)
end

function response(status, headers, body)
  if status ~= 200 then non200 = non200 + 1 end
end

function done(summary, latency, requests)
  local bad = 0
  for _, th in ipairs(threads) do bad = bad + (th:get("non200") or 0) end
  io.write(fmt("relay: %d requests, %d non-200, %.0f req/s\n",
               summary.requests, bad,
               summary.requests / (summary.duration / 1e6)))
  io.write(fmt("relay latency (ms): p50 %.2f  p90 %.2f  p99 %.2f  max %.2f\n",
               latency:percentile(50) / 1000, latency:percentile(90) / 1000,
               latency:percentile(99) / 1000, latency.max / 1000))
end
