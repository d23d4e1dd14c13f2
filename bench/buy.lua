-- wrk script: POST /buy_ticket with a distinct user per request.
-- Arguments (after --): items (buy items 1..items at random, default 1), run name (user prefix),
-- limit (stop after this many answers in all, default none).
-- Prints one line "RESULT {json}" with statuses, latency percentiles, the time of the last 201
-- (sold_out_seconds) and of the last answer, both from the first request.
local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } timespec_t;
int clock_gettime(int clock, timespec_t *tp);
]]

local function now()
    local t = ffi.new("timespec_t")
    ffi.C.clock_gettime(1, t) -- CLOCK_MONOTONIC: the same clock in every thread
    return tonumber(t.tv_sec) + tonumber(t.tv_nsec) / 1e9
end

local threads = {}
local thread_count = 0

function setup(thread)
    thread_count = thread_count + 1
    thread:set("id", thread_count)
    table.insert(threads, thread)
end

function init(args)
    items = tonumber(args[1]) or 1
    run = args[2] or "bench"
    local limit = tonumber(args[3])
    share = limit and math.ceil(limit / args[4]) or nil
    sent, answered, statuses = 0, 0, {}
    started, last_created, last_answer = now(), 0, 0
    math.randomseed(id * 7919 + os.time())
end

function request()
    sent = sent + 1
    local body = string.format('{"item_id": %d, "user_id": "%s-%d-%d"}', math.random(items), run, id, sent)
    return wrk.format("POST", "/buy_ticket", { ["Content-Type"] = "application/json" }, body)
end

function response(status)
    answered = answered + 1
    statuses[tostring(status)] = (statuses[tostring(status)] or 0) + 1
    last_answer = now()
    if status == 201 then last_created = last_answer end
    if share and answered >= share then wrk.thread:stop() end
end

function done(summary, latency)
    local statuses_all, first, last, finished = {}, math.huge, 0, 0
    for _, thread in ipairs(threads) do
        for status, count in pairs(thread:get("statuses")) do
            statuses_all[status] = (statuses_all[status] or 0) + count
        end
        first = math.min(first, thread:get("started"))
        last = math.max(last, thread:get("last_created"))
        finished = math.max(finished, thread:get("last_answer"))
    end
    local parts = {}
    for status, count in pairs(statuses_all) do table.insert(parts, string.format('"%s": %d', status, count)) end
    io.write(string.format(
        'RESULT {"requests": %d, "seconds": %.3f, "errors": %d, "statuses": {%s}, ' ..
        '"p50_ms": %.2f, "p99_ms": %.2f, "max_ms": %.2f, "sold_out_seconds": %.3f, "answered_seconds": %.3f}\n',
        summary.requests, summary.duration / 1e6,
        summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
        table.concat(parts, ", "), latency:percentile(50) / 1000, latency:percentile(99) / 1000,
        latency.max / 1000, last > 0 and (last - first) or -1, finished - first))
end
