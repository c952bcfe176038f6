-- What the gateway changes in the JSON Envoy's transcoder renders for chat and completions (the typed
-- CreateChatCompletion, StreamChatCompletion, CreateCompletion and StreamCompletion replies), so that a REST client
-- reads what OpenAI and vLLM send. Pure functions of the JSON text, run by openai_compat.lua; each replacement is
-- of bytes that can only be what they say: a chat or completions reply has no object key a client chose, and
-- inside a JSON string every `"` is escaped, so `"token_ids":[]` can only be that field, empty.
--
-- json(text)    -> a unary reply's JSON without the empty lists OpenAI and vLLM leave out
-- events(text)  -> a stream's Server-Sent Events (`data: <chunk>\n\n` each, whole events only: the transcoder
--                  writes each message at once) with the same lists left out, the server's in-band error chunk
--                  completed to OpenAI's error object, and the empty chunk that ends a gateway stream written as
--                  `data: [DONE]`.
-- named(text)   -> a Messages or Responses API stream's events, each with its `event: <type>` line (the event's
--                  `type`, its first field, names it), as Anthropic and OpenAI send them; no [DONE].

local M = {}

-- Repeated fields the transcoder prints as [] (always_print_primitive_fields) and OpenAI and vLLM leave out
-- until they apply: the token ids (vLLM: only with return_token_ids), and in a stream's delta its tool calls
-- (OpenAI sends them only on a delta that carries one; a unary message has "tool_calls": [] as vLLM's).
-- chatgen.transport.json_mapping._LEFT_OUT_WHEN_EMPTY is the same rule for the replies the server renders.
-- Each as {the empty field's bytes, the pattern of it after another field, of it leading its object}.
local function lists(names)
  local out = {}
  for _, name in ipairs(names) do
    local key = '"' .. name .. '":%[%]'
    out[#out + 1] = { '"' .. name .. '":[]', "," .. key, "{" .. key .. ",?" }
  end
  return out
end
local TOKEN_LISTS = lists({ "token_ids", "prompt_token_ids" })
local DELTA_LISTS = lists({ "tool_calls" })

-- The empty chunk the server ends a gateway stream with (every field at its default; a real chunk has an id).
local END_CHUNK = '{"id":"","object":"",'
local DONE = "data: [DONE]\n\n"

local function without(text, fields)
  for _, field in ipairs(fields) do
    -- A plain find first: most events carry each of these, but a pattern scan costs more than a search.
    if text:find(field[1], 1, true) then
      -- A field after another one (",key" ...), then one that leads its object ("{key," or "{key}").
      text = text:gsub(field[2], ""):gsub(field[3], "{")
    end
  end
  return text
end

function M.json(text)
  if not text:find("[]", 1, true) then return text end
  return without(text, TOKEN_LISTS)
end

-- An error chunk's error object has all four of OpenAI's keys: `param` is null when no field is at fault (the
-- transcoder leaves an unset optional field out). The error's `type` is one of chatgen's names (no escapes).
local function with_param(event)
  if event:find('"param":', 1, true) then return event end
  return (event:gsub('("error":{"message":.-,"type":"[^"]*")', '%1,"param":null', 1))
end

local function event_json(chunk)
  if chunk:sub(1, #END_CHUNK) == END_CHUNK then return nil end
  chunk = without(without(chunk, TOKEN_LISTS), DELTA_LISTS)
  if chunk:find('"error":{', 1, true) then chunk = with_param(chunk) end
  return chunk
end

function M.events(text)
  return (text:gsub("data: ([^\n]*)\n\n", function(chunk)
    local json = event_json(chunk)
    if json == nil then return DONE end
    return "data: " .. json .. "\n\n"
  end))
end

-- An event's JSON starts with its type: `type` is the first field of StreamMessageResponse and
-- ResponseStreamEvent, and the transcoder prints the fields in the .proto's order.
local function named_event(chunk)
  local name = chunk:match('^{"type":"([%w_%.]*)"')
  if name == nil or name == "" then return "data: " .. chunk .. "\n\n" end
  return "event: " .. name .. "\ndata: " .. chunk .. "\n\n"
end

function M.named(text)
  return (text:gsub("data: ([^\n]*)\n\n", named_event))
end

return M
