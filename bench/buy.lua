-- wrk script: POST /buy_ticket with a distinct user per request.
-- Arguments (after --): items (buy items first..first + items - 1 at random, default 1), run name
-- (user prefix), limit (stop after this many answers in all), threads (wrk's -t, to share the
-- limit), first (the first item's id, default 1), and, optionally, a file of "user token" lines
-- (bench.py's token_file()).
-- Each user id ends with the time its request was sent; a 201 echoes it, which gives the
-- latency of every purchase; with tokens, the user is the token's and its send time is kept here
-- until the 201 names it. Prints one line "RESULT {json}": statuses, latency percentiles of
-- all answers and of the 201s alone, the time of the last 201 (sold_out_seconds) and of the
-- last answer, both counted from the first request.
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

function setup(thread)
    table.insert(threads, thread)
    thread:set("id", #threads)
end

function init(args)
    items = tonumber(args[1]) or 1
    run = args[2] or "bench"
    local limit = tonumber(args[3])
    share = limit and math.ceil(limit / tonumber(args[4])) or nil
    first_item = tonumber(args[5]) or 1
    sent, answered, statuses, purchase_ms = 0, 0, {}, {}
    started, last_created, last_answer = now(), 0, 0
    math.randomseed(id * 7919 + os.time())
    if args[6] then load_tokens(args[6]) end
end

-- With tokens: each request sends the next buyer's token of the file, from a random place in it,
-- and that buyer's user id in the body, which open mode reads and verified mode checks.
function load_tokens(path)
    users, tokens, sent_times = {}, {}, {}
    for line in io.lines(path) do
        local user, token = line:match("^(%S+) (%S+)$")
        table.insert(users, user)
        table.insert(tokens, token)
    end
    first_token = math.random(#tokens)
end

local function token_request()
    local index = (first_token + sent) % #tokens + 1
    sent_times[users[index]] = now()
    local body = string.format('{"item_id": %d, "user_id": "%s"}', first_item + math.random(items) - 1, users[index])
    return wrk.format("POST", "/buy_ticket", { ["Content-Type"] = "application/json",
                                               ["Authorization"] = "Bearer " .. tokens[index] }, body)
end

function request()
    sent = sent + 1
    if tokens then return token_request() end
    local user = string.format("%s-%d-%d-%.6f", run, id, sent, now())
    local body = string.format('{"item_id": %d, "user_id": "%s"}', first_item + math.random(items) - 1, user)
    return wrk.format("POST", "/buy_ticket", { ["Content-Type"] = "application/json" }, body)
end

function response(status, headers, body)
    answered = answered + 1
    last_answer = now()
    statuses[tostring(status)] = (statuses[tostring(status)] or 0) + 1
    if status == 201 then
        last_created = last_answer
        local sent_at
        if tokens then
            local user = body:match('"user_id": "([^"]*)"')
            sent_at = user and sent_times[user]
            if user then sent_times[user] = nil end
        else
            sent_at = tonumber(body:match('"user_id": "[^"]*%-([%d%.]+)"'))
        end
        if sent_at then table.insert(purchase_ms, (last_answer - sent_at) * 1000) end
    end
    if share and answered >= share then wrk.thread:stop() end
end

local function percentile(sorted, fraction)
    if #sorted == 0 then return -1 end
    return sorted[math.min(#sorted, math.floor(fraction * #sorted) + 1)]
end

function done(summary, latency)
    local statuses_all, purchases, first, last, finished = {}, {}, math.huge, 0, 0
    for _, thread in ipairs(threads) do
        for status, count in pairs(thread:get("statuses")) do
            statuses_all[status] = (statuses_all[status] or 0) + count
        end
        for _, ms in ipairs(thread:get("purchase_ms")) do table.insert(purchases, ms) end
        first = math.min(first, thread:get("started"))
        last = math.max(last, thread:get("last_created"))
        finished = math.max(finished, thread:get("last_answer"))
    end
    table.sort(purchases)
    local parts = {}
    for status, count in pairs(statuses_all) do table.insert(parts, string.format('"%s": %d', status, count)) end
    io.write(string.format(
        'RESULT {"requests": %d, "seconds": %.3f, "errors": %d, "statuses": {%s}, ' ..
        '"p50_ms": %.2f, "p99_ms": %.2f, "max_ms": %.2f, ' ..
        '"purchase_p50_ms": %.2f, "purchase_p99_ms": %.2f, "purchase_max_ms": %.2f, ' ..
        '"sold_out_seconds": %.3f, "answered_seconds": %.3f}\n',
        summary.requests, summary.duration / 1e6,
        summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
        table.concat(parts, ", "), latency:percentile(50) / 1000, latency:percentile(99) / 1000,
        latency.max / 1000, percentile(purchases, 0.5), percentile(purchases, 0.99),
        percentile(purchases, 1.0), last > 0 and (last - first) or -1, finished - first))
end
