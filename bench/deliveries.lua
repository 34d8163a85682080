-- wrk script: distinct conference-member events for some conferences (100 members per wrk
-- thread and conference, each event at its own time), by POST (JSON) or GET.
-- Settings come from the environment: BENCH_TARGETS ("path|conferenceId" of each conference,
-- comma-separated; events go to them in turn), BENCH_TAG, BENCH_METHOD (POST or GET),
-- BENCH_DUPLICATES (percent of requests that repeat an earlier event), BENCH_RUN (a label that
-- keeps events of separate runs apart). At the end it prints one JSON line of results.

local targets = {}
for item in string.gmatch(os.getenv("BENCH_TARGETS"), "[^,]+") do
  local p, c = string.match(item, "([^|]+)|(.+)")
  table.insert(targets, {path = p, cid = c})
end
local tag = os.getenv("BENCH_TAG") or "bench"
local method = os.getenv("BENCH_METHOD") or "POST"
local dup_percent = tonumber(os.getenv("BENCH_DUPLICATES") or "0")
local run = os.getenv("BENCH_RUN") or "r"

local counter = 0
local next_thread = 0

function setup(thread)
  next_thread = next_thread + 1
  thread:set("tid", next_thread)
end

function init(args)
  math.randomseed(tid * 7919 + os.time())
  counter = 0
end

local function fields(n, cid)
  local seconds = n % 60
  local minutes = math.floor(n / 60) % 60
  local hours = math.floor(n / 3600) % 24
  return {
    eventType = "conference-member",
    conferenceId = cid,
    memberId = string.format("member-%s-%d-%d", run, tid, n % 100),
    callId = string.format("c-%s-%d-%d", run, tid, n % 100),
    state = "active",
    activeMembers = tostring(n % 50 + 1),
    mute = "false",
    hold = "false",
    time = string.format("2026-11-24T%02d:%02d:%02d.%03dZ", hours, minutes, seconds, n % 1000),
    tag = tag,
  }
end

local order = {"eventType", "conferenceId", "memberId", "callId", "state", "activeMembers",
               "mute", "hold", "time", "tag"}

local function as_json(f)
  local parts = {}
  for _, k in ipairs(order) do
    local v = f[k]
    if k == "activeMembers" then
      table.insert(parts, string.format('"%s":%s', k, v))
    elseif k == "mute" or k == "hold" then
      table.insert(parts, string.format('"%s":%s', k, v))
    else
      table.insert(parts, string.format('"%s":"%s"', k, v))
    end
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

local function as_query(f)
  local parts = {}
  for _, k in ipairs(order) do
    table.insert(parts, k .. "=" .. f[k]:gsub(":", "%%3A"):gsub("%+", "%%2B"))
  end
  return table.concat(parts, "&")
end

function request()
  local n
  if counter > 0 and math.random(100) <= dup_percent then
    n = math.random(0, counter - 1)  -- an earlier event again
  else
    n = counter
    counter = counter + 1
  end
  local target = targets[n % #targets + 1]
  local f = fields(n, target.cid)
  if method == "GET" then
    return wrk.format("GET", target.path .. "?" .. as_query(f))
  end
  return wrk.format("POST", target.path, {["Content-Type"] = "application/json"}, as_json(f))
end

function done(summary, latency, requests)
  local non2xx = summary.errors.status
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"non2xx":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"timeouts":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, non2xx, summary.errors.connect, summary.errors.read,
    summary.errors.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
end
