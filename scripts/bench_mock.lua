-- OpenAI-compatible mock upstream for scripts/bench, run by nginx's Lua module.
-- The stream shape comes from the upstream model name, which every gateway forwards:
-- "<anything>-s<N>-i<MS>" streams N content chunks, then the finish chunk, the usage chunk
-- (when asked for) and [DONE]. With MS 0 the whole stream goes out in one write, so a
-- gateway reads it at once ("burst"); otherwise each frame is written and flushed on its
-- own, MS milliseconds after the last, as a model's tokens arrive ("paced").
local M = {}

local HEAD = '{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
    .. '"model":"bench-model","choices":'
local COMPLETION = '{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,'
    .. '"model":"bench-model","choices":[{"index":0,"message":{"role":"assistant",'
    .. '"content":"Hello from the bench mock."},"finish_reason":"stop"}],'
    .. '"usage":{"prompt_tokens":9,"completion_tokens":6,"total_tokens":15}}'
-- Every chunk's text differs ("t1 ", "t2 ", ...): LiteLLM aborts streams that repeat a chunk.
local function content_frame(i)
    local role = i == 1 and '"role":"assistant",' or ''
    return 'data: ' .. HEAD .. '[{"index":0,"delta":{' .. role .. '"content":"t' .. i
        .. ' "},"finish_reason":null}]}\n\n'
end
local FINISH = 'data: ' .. HEAD .. '[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
local DONE = 'data: [DONE]\n\n'

-- Whole bodies of unpaced streams, built once per shape so the mock stays cheap.
local bodies = {}

local function usage_frame(n)
    return 'data: ' .. HEAD .. '[],"usage":{"prompt_tokens":9,"completion_tokens":' .. n
        .. ',"total_tokens":' .. (n + 9) .. '}}\n\n'
end

local function tail(n, usage)
    if usage then
        return FINISH .. usage_frame(n) .. DONE
    end
    return FINISH .. DONE
end

local function whole_body(n, usage)
    local key = n .. (usage and 'u' or '')
    local body = bodies[key]
    if body == nil then
        local frames = {}
        for i = 1, n do
            frames[i] = content_frame(i)
        end
        frames[n + 1] = tail(n, usage)
        body = table.concat(frames)
        bodies[key] = body
    end
    return body
end

local function stream(body)
    local n, ms = string.match(body, '"model"%s*:%s*"[^"]*%-s(%d+)%-i(%d+)"')
    n = math.max(tonumber(n) or 20, 1)
    ms = tonumber(ms) or 0
    local usage = string.find(body, '"include_usage"%s*:%s*true') ~= nil
    ngx.header['Content-Type'] = 'text/event-stream'
    ngx.header['Cache-Control'] = 'no-cache'
    if ms == 0 then
        ngx.print(whole_body(n, usage))
        return
    end
    local frames = {}
    for i = 1, n do
        frames[i] = content_frame(i)
    end
    frames[n + 1] = FINISH
    if usage then
        frames[#frames + 1] = usage_frame(n)
    end
    frames[#frames + 1] = DONE
    for i, frame in ipairs(frames) do
        if i > 1 then
            ngx.sleep(ms / 1000)
        end
        ngx.print(frame)
        ngx.flush(true)
    end
end

function M.chat()
    ngx.req.read_body()
    local body = ngx.req.get_body_data() or ''
    if string.find(body, '"stream"%s*:%s*true') then
        return stream(body)
    end
    ngx.header['Content-Type'] = 'application/json'
    ngx.header['Content-Length'] = #COMPLETION
    ngx.print(COMPLETION)
end

return M
