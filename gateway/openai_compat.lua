-- Makes Envoy speak OpenAI's REST dialect in front of chatgen. Read by Envoy as it is; its settings come from
-- the route's metadata (chatgen.gateway.config puts them there, from chatgen.errors and the routing config).
--
-- Request:  what the edge checks (a body that is JSON by its Content-Type; gRPC has its own port; a timeout
--           header that is a number; query strings are dropped: no REST path reads one, and the transcoder would
--           take their names for request fields; a POST body that is a JSON object, its JSON types and the vLLM
--           extensions that are not served, json_types.lua), then
--           chat and completions bodies (and /invocations, one or the other by its shape) go to the typed RPC
--           their `stream` asks for, and so do Messages and Responses bodies: the path becomes that RPC's binding
--           (request_types.json's routes) and the transcoder parses the body; a stream is marked for the server
--           (x-chatgen-stream: sse). The other POST bodies (tokenizer, LoRA) go to the server as they came
--           (google.api.HttpBody), which parses them. The shared gateway routes on `model` (json_to_metadata,
--           the filter before this one, has parsed it into dynamic metadata by the time body() returns).
-- Response: gRPC errors get OpenAI's error JSON (the server sends it in `x-chatgen-error`), or on the Messages
--           API's paths (/v1/messages...) Anthropic's, as the errors this filter or Envoy answer there. Chat and
--           completions replies are the transcoder's JSON, with what replies.lua changes in it (streams chunk by
--           chunk: their end and in-band errors); the Messages and Responses streams get their event: lines
--           there; the …Http RPCs' replies pass as the server wrote them.
--
-- Settings (route metadata under this filter's name, key "chatgen"):
--   http_errors   HTTP status (a string) -> {OpenAI type, code, Anthropic type}, for errors without a chatgen
--                 error body (Envoy's own, or raised by gRPC itself)
--   local_errors  "not_found" / "unknown_path" / "invalid" / "media_type" / "unsupported" -> {HTTP status,
--                 OpenAI type, code, Anthropic type}: what this filter answers itself
--   lua_path      where json_types.lua, replies.lua and dkjson.lua are (a package.path entry: the Lua filter's
--                 own directory)
--   request_types the JSON file of request types json_types.lua checks bodies against, and the typed RPCs'
--                 paths (chatgen.gateway.request_types)
--   models        the shared gateway (chatgen gateway --backends) only: the models it routes; absent with one
--                 backend, where the server answers for its own model
--   model_cards   the shared gateway only: per model, its card when none of its replicas answers
--   self_cluster  the shared gateway only: the cluster that leads back into this REST API (an internal listener)

local ROUTED = { ["/v1/chat/completions"] = true, ["/v1/completions"] = true, ["/v1/messages"] = true,
  ["/v1/messages/count_tokens"] = true, ["/v1/responses"] = true, ["/invocations"] = true, ["/tokenize"] = true,
  ["/detokenize"] = true }
local MODEL_HEADER = "x-chatgen-model"
-- The key of the conversation a request is of (chatgen.gateway.routes.SESSION_HEADER: a model balanced by
-- affinity hashes on it), and the key the gateway gives a Responses API conversation's first turn
-- (chatgen.transport.responses.CONVERSATION_KEY: the server starts that turn's response id with it).
local SESSION_HEADER = "x-chatgen-session"
local CONVERSATION_HEADER = "x-chatgen-conversation"
-- A Responses API id's conversation key: the 16 hex digits after resp_ (chatgen.transport.responses.CONVERSATION).
local CONVERSATION = "^resp_(" .. string.rep("%x", 16) .. ")"
local STATUS_HEADER = "x-chatgen-status"
-- What marks a REST stream for the server (chatgen.transport.servicers.SSE_METADATA).
local STREAM_HEADER = "x-chatgen-stream"
-- The typed RPCs' streaming bindings end so; the REST API's paths never do.
local STREAM_VERB = ":stream"
local ANTHROPIC_PREFIX = "/v1/messages"
-- Where the request phase notes, for the response phase, that the call speaks Anthropic's errors.
local NOTES = "chatgen.lua"

local ESCAPES = { ['"'] = '\\"', ['\\'] = '\\\\', ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t' }

local function settings(handle)
  return handle:metadata():get("chatgen")
end

local function json_string(s)
  return '"' .. s:gsub('[%c"\\]', function(c) return ESCAPES[c] or string.format("\\u%04x", c:byte()) end) .. '"'
end

local function percent_decode(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

local function is_anthropic(path)
  return path:sub(1, #ANTHROPIC_PREFIX) == ANTHROPIC_PREFIX
end

-- Whether the request phase noted this call as the Messages API's.
local function speaks_anthropic(handle)
  local notes = handle:streamInfo():dynamicMetadata():get(NOTES)
  return notes ~= nil and notes["anthropic"] == true
end

-- OpenAI's error JSON (chatgen.errors.openai_error's shape), or with `anthropic_type` Anthropic's
-- (chatgen.errors.anthropic_error's: the param leads the message), from a message already escaped as a JSON
-- string.
local function error_json(message_json, error_type, param, code, anthropic_type)
  if anthropic_type ~= nil then
    if param ~= nil and not message_json:lower():find(param:lower(), 1, true) then
      message_json = '"' .. param .. ': ' .. message_json:sub(2)
    end
    return '{"type":"error","error":{"type":"' .. anthropic_type .. '","message":' .. message_json .. '}}'
  end
  return '{"error":{"message":' .. message_json .. ',"type":"' .. error_type .. '","param":' ..
    (param and ('"' .. param .. '"') or "null") .. ',"code":"' .. code .. '"}}'
end

local function respond_error(handle, config, kind, message, param)
  local e = config["local_errors"][kind]
  local body = error_json(json_string(message), e[2], param, e[3], speaks_anthropic(handle) and e[4] or nil)
  -- Like a server error: local_reply_config rewrites local reply bodies, envoy_on_response puts this one back,
  -- and the status too (Envoy answers a request of a gRPC content type in gRPC's way: 200 and a grpc-status).
  local status = string.format("%d", e[1])
  handle:respond({ [":status"] = status, ["content-type"] = "application/json", ["x-chatgen-error"] = body,
    [STATUS_HEADER] = status }, body)
end

-- The body check (json_types.lua over dkjson, a JSON library in plain Lua) and the reply rewrites (replies.lua),
-- loaded once per Lua state from the directory the settings name, with the request types the check reads.
local modules = nil

local function loaded(config)
  if modules == nil then
    package.path = config["lua_path"] .. ";" .. package.path
    local json = require("dkjson")
    local file = assert(io.open(config["request_types"], "rb"))
    local types = json.decode(file:read("*a"), 1, json.null)
    file:close()
    modules = { json = json, types = types, check = require("json_types"), replies = require("replies") }
  end
  return modules
end

-- A POST body of a path the gateway checks: (true) when answered here, for not being a JSON object, for being
-- an /invocations body of neither shape, for the wrong JSON types, or for asking what is not served; else
-- (false, the decoded body, its request message's name).
local function checked_body(handle, config, path)
  local c = loaded(config)
  if c.types.paths[path] == nil and c.types.shapes[path] == nil then return false end
  local bytes = handle:body()
  local request, problem = c.check.decode(c.json, bytes ~= nil and bytes:getBytes(0, bytes:length()) or "")
  if request == nil then
    respond_error(handle, config, "invalid", problem, nil)
    return true
  end
  local name = c.check.message_for(c.json, c.types, path, request)
  if name == nil then
    respond_error(handle, config, "invalid", "an " .. path .. " body is a chat completions request (with " ..
      "'messages') or a completions request (with 'prompt')", "messages")
    return true
  end
  local failure = c.check.check(c.json, c.types, name, request)
  if failure == nil then return false, request, name end
  respond_error(handle, config, failure.kind, failure.message, failure.param)
  return true
end

-- Where the transcoder is to take a body of request message `name`: the typed RPC its `stream` asks for (nil:
-- the path's own RPC). A stream is marked for the server; what the response phase rewrites is noted for it:
-- "data" (OpenAI's chunks, then [DONE]) or "named" (event: lines) for a stream, "json" for a chat or completions
-- reply (the Messages and Responses APIs' replies pass as Envoy wrote them).
local function typed_route(handle, config, name, request)
  local route = name ~= nil and loaded(config).types.routes[name] or nil
  if route == nil then return nil end
  local stream = request["stream"] == true
  local reply = stream and route["events"] or (route["events"] == "data" and "json" or nil)
  if reply ~= nil then handle:streamInfo():dynamicMetadata():set(NOTES, "reply", reply) end
  return stream and route["stream"] or route["unary"], stream
end

local function routed_models(config)
  local models = {}
  for _, name in ipairs(config["models"]) do models[name] = true end
  return models
end

-- The shared gateway routes a model by the x-chatgen-model header; the route is picked again once it is set.
local function route_to(handle, headers, model)
  headers:add(MODEL_HEADER, model)
  handle:clearRouteCache()
end

-- The shared gateway's GET /v1/models: each model's card as its own servers give it (GET /v1/models/ID through
-- this gateway again, so routed and transcoded as any call), in the order configured; the card from the config
-- for a model none of whose replicas answers. A single server lists exactly these cards.
local function model_list(handle, headers, config)
  local cards = {}
  local auth = headers:get("authorization")
  for i, name in ipairs(config["models"]) do
    local request = { [":method"] = "GET", [":path"] = "/v1/models/" .. name, [":authority"] = "chatgen" }
    if auth ~= nil then request["authorization"] = auth end
    local reply, body = handle:httpCall(config["self_cluster"], request, "", 5000)
    if reply ~= nil and reply[":status"] == "200" and body ~= nil and body:sub(1, 1) == "{" then
      cards[i] = body
    else
      cards[i] = config["model_cards"][i]
    end
  end
  return '{"object":"list","data":[' .. table.concat(cards, ",") .. ']}'
end

-- GET /v1/models and GET /v1/models/ID. The openai SDK sends a model id's "/" as %2F, which the transcoder
-- leaves encoded in a multi-segment {id=**}: the path carries the decoded id instead (model ids only). The
-- shared gateway answers the list itself, 404s models it does not route and picks the route of the others.
-- True when answered here.
local function models_request(handle, headers, method, path)
  if method ~= "GET" then return false end
  local config = settings(handle)
  local shared = config ~= nil and config["models"] ~= nil
  if shared and path == "/v1/models" then
    handle:respond({ [":status"] = "200", ["content-type"] = "application/json" }, model_list(handle, headers, config))
    return true
  end
  local raw = path:match("^/v1/models/(.+)$")
  if raw == nil then return false end
  local id = percent_decode(raw)
  if id ~= raw and id:match("^[%w%._:/@%+%-]+$") then
    headers:replace(":path", "/v1/models/" .. id)
  end
  if not shared then return false end
  if not routed_models(config)[id] then
    respond_error(handle, config, "not_found", "The model '" .. id .. "' does not exist", "model")
    return true
  end
  route_to(handle, headers, id)
  return false
end

-- The media type of a Content-Type header, lower-cased, without its parameters ("" when there is none).
local function media_type(content_type)
  if content_type == nil then return "" end
  return (content_type:match("^%s*([^;%s]*)") or ""):lower()
end

-- Answers a request the edge refuses (true), before anything reaches the server.
local function refused(handle, headers, method)
  local media = media_type(headers:get("content-type"))
  if media:sub(1, 16) == "application/grpc" then
    respond_error(handle, settings(handle), "media_type",
      "This port serves the REST API; gRPC callers use the gRPC port", nil)
    return true
  end
  -- A body is JSON by its Content-Type, or by having none (curl -d without -H sends form-urlencoded: refused,
  -- as vLLM's server does, rather than read as something it does not claim to be).
  if method == "POST" and media ~= "" and media ~= "application/json" then
    respond_error(handle, settings(handle), "media_type",
      "Content-Type must be application/json, not " .. media:sub(1, 64) ..
      " (with curl -d, add -H 'Content-Type: application/json')", nil)
    return true
  end
  -- A REST caller's timeout becomes the gRPC deadline: the server stops the request when it passes and the
  -- caller gets 504 with an OpenAI error body (DEADLINE_EXCEEDED below). 0 is no deadline, as in Envoy's own
  -- timeout headers.
  local timeout_ms = headers:get("x-request-timeout-ms")
  headers:remove("grpc-timeout")
  if timeout_ms ~= nil then
    if not timeout_ms:match("^%d+$") or #timeout_ms > 8 then
      respond_error(handle, settings(handle), "invalid",
        "x-request-timeout-ms must be a whole number of milliseconds (at most 8 digits; 0: no deadline)",
        "x-request-timeout-ms")
      return true
    end
    if tonumber(timeout_ms) > 0 then headers:add("grpc-timeout", timeout_ms .. "m") end
  end
  return false
end

-- The key of the conversation a request is of, the first of: the caller's x-session-id header, the body's
-- prompt_cache_key or user, on the Messages API its metadata.user_id, on the Responses API the conversation its
-- previous_response_id continues; else, for a Responses API conversation's first turn, a key made here (from
-- the request id Envoy generated) that the server puts in the response id, so that the next turn, which names
-- that id, hashes to the same key. Nil: no key.
local function session_key(headers, request, path)
  local named = headers:get("x-session-id")
  if named ~= nil and named ~= "" then return named end
  local fields = { "prompt_cache_key", "user" }
  if is_anthropic(path) then fields = { "metadata_user_id" } end
  for _, field in ipairs(fields) do
    local value = request[field]
    if type(value) == "string" and value ~= "" then return value end
  end
  if path ~= "/v1/responses" then return nil end
  local previous = request["previous_response_id"]
  if type(previous) == "string" and previous ~= "" then return previous:match(CONVERSATION) or previous end
  local made = (headers:get("x-request-id") or ""):gsub("-", ""):sub(1, 16):lower()
  if not made:match("^" .. string.rep("%x", 16) .. "$") then return nil end
  headers:add(CONVERSATION_HEADER, made)
  return made
end

function envoy_on_request(handle)
  local headers = handle:headers()
  -- Only the gateway may pick a model's route, and name a request's conversation.
  headers:remove(MODEL_HEADER)
  headers:remove(SESSION_HEADER)
  headers:remove(CONVERSATION_HEADER)
  headers:remove(STREAM_HEADER)
  if is_anthropic(headers:get(":path")) then
    handle:streamInfo():dynamicMetadata():set(NOTES, "anthropic", true)
  end
  local method = headers:get(":method")
  if refused(handle, headers, method) then return end
  local path, query = headers:get(":path"):match("^([^?]*)(.*)$")
  if query ~= "" then headers:replace(":path", path) end
  if models_request(handle, headers, method, path) then return end
  if method ~= "POST" then return end
  local config = settings(handle)
  if config == nil then return end
  if path:sub(-#STREAM_VERB) == STREAM_VERB then
    respond_error(handle, config, "unknown_path", "Unknown request URL: POST " .. path:sub(1, 128), nil)
    return
  end
  local answered, body, name = checked_body(handle, config, path)
  if answered then return end
  -- Header handles taken before body() yielded are stale now; take them again.
  headers = handle:headers()
  local target, stream = typed_route(handle, config, name, body)
  if target ~= nil then
    if target ~= path then headers:replace(":path", target) end
    if stream then headers:add(STREAM_HEADER, "sse") end
  end
  if not ROUTED[path] or config["models"] == nil then return end
  handle:body()
  local request = handle:streamInfo():dynamicMetadata():get("chatgen.request")
  headers = handle:headers()
  local model = request ~= nil and request["model"] or nil
  if type(model) ~= "string" or model == "" then
    respond_error(handle, config, "invalid", "'model' is required", "model")
    return
  end
  if not routed_models(config)[model] then
    respond_error(handle, config, "not_found", "The model '" .. model .. "' does not exist", "model")
    return
  end
  local session = session_key(headers, request, path)
  if session ~= nil then headers:add(SESSION_HEADER, session) end
  route_to(handle, headers, model)
end

-- The JSON-escaped text of the "message" member of a transcoder status body ({"code":N,"message":"..."}),
-- returned still escaped so it can go straight into another JSON string.
local function status_message(body)
  local start = body:find('"message":"', 1, true)
  if start == nil then return nil end
  local i = start + #'"message":"'
  local first = i
  while i <= #body do
    local c = body:sub(i, i)
    if c == "\\" then
      i = i + 2
    elseif c == '"' then
      return body:sub(first, i - 1)
    else
      i = i + 1
    end
  end
  return nil
end

local function openai_error(handle, message_json, status)
  local config = settings(handle)
  local errors = config ~= nil and config["http_errors"] or { ["500"] = { "server_error", "internal", "api_error" } }
  local kind = errors[string.format("%d", status)] or errors["500"]
  return error_json('"' .. message_json .. '"', kind[1], nil, kind[2], speaks_anthropic(handle) and kind[3] or nil)
end

function envoy_on_response(handle)
  local headers = handle:headers()
  local status = tonumber(headers:get(":status")) or 500
  local grpc_status = headers:get("grpc-status")
  local err = headers:get("x-chatgen-error")
  -- gRPC plumbing that an OpenAI client has no use for.
  headers:remove("grpc-status")
  headers:remove("grpc-message")
  headers:remove("grpc-accept-encoding")
  headers:remove("grpc-status-details-bin")
  -- The server's retry pushback for gRPC callers; REST callers get the same as `retry-after`.
  headers:remove("grpc-retry-pushback-ms")
  local local_status = headers:get(STATUS_HEADER)
  if local_status ~= nil then
    headers:remove(STATUS_HEADER)
    headers:replace(":status", local_status)
  end
  if err ~= nil then
    headers:remove("x-chatgen-error")
    headers:replace("content-type", "application/json")
    handle:body(true):setBytes(err)
    return
  end
  local notes = handle:streamInfo():dynamicMetadata():get(NOTES)
  local reply = notes ~= nil and notes["reply"] or nil
  if reply ~= nil and status == 200 and (grpc_status == nil or grpc_status == "0") then
    local rewrite = loaded(settings(handle)).replies
    if reply ~= "json" then
      -- Chunk by chunk as the transcoder writes them (whole events each), so that nothing waits for the next.
      local events = reply == "named" and rewrite.named or rewrite.events
      for chunk in handle:bodyChunks() do
        local bytes = chunk:getBytes(0, chunk:length())
        local out = events(bytes)
        if out ~= bytes then chunk:setBytes(out) end
      end
    else
      local body = handle:body()
      if body ~= nil then
        local bytes = body:getBytes(0, body:length())
        local out = rewrite.json(bytes)
        if out ~= bytes then body:setBytes(out) end
      end
    end
    return
  end
  if grpc_status ~= nil and grpc_status ~= "0" then
    -- A gRPC error the chatgen handlers did not produce (e.g. from grpc itself), before any body.
    local message = json_string(percent_decode(headers:get("grpc-message") or "upstream error"))
    headers:replace("content-type", "application/json")
    handle:body(true):setBytes(openai_error(handle, message:sub(2, -2), status))
    return
  end
  if status >= 400 then
    -- The transcoder turned such an error (e.g. DEADLINE_EXCEEDED from grpc's deadline) into its own
    -- {"code":N,"message":...} body; Envoy's own replies are OpenAI-shaped by local_reply_config already.
    local body = handle:body()
    if body ~= nil then
      local bytes = body:getBytes(0, body:length())
      if bytes:sub(1, 8) == '{"code":' then
        body:setBytes(openai_error(handle, status_message(bytes) or "upstream error", status))
      end
    end
  end
end
