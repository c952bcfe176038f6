-- Makes Envoy's grpc_json_transcoder speak OpenAI's REST dialect in front of chatgen.
--
-- Request:  the POST bodies go to the server as they came (google.api.HttpBody), which checks them and picks
--           a stream or a unary reply from `"stream"`; nothing here reads them, except that the shared gateway
--           routes on `model` (json_to_metadata, the filter before this one, has parsed it into dynamic metadata
--           by the time body() returns, so no JSON is parsed here).
-- Response: gRPC errors get OpenAI's error JSON (the server sends it in `x-chatgen-error`). Replies and streams
--           need nothing here: the server sends their bytes ready to pass on, so no Lua runs per token.

local ROUTED = { ["/v1/chat/completions"] = true, ["/v1/completions"] = true }

-- HTTP status of an error without a chatgen error body (Envoy's own, or raised by gRPC itself) -> OpenAI error
-- {type, code}. chatgen.gateway fills the table in from chatgen.errors.GATEWAY_REPLIES when it renders this file.
local HTTP_ERRORS = {} --[[ GATEWAY_REPLIES ]]

-- The shared gateway (chatgen gateway --backends) only: the models it routes (name -> true), the body of
-- GET /v1/models, and the errors it answers itself ({HTTP status, OpenAI type, code}, from chatgen.errors).
-- With one backend MODELS stays nil and the server answers for its own model.
local MODELS = nil --[[ MODELS ]]
local MODEL_LIST = nil --[[ MODEL_LIST ]]
local MODEL_ERRORS = {} --[[ MODEL_ERRORS ]]
local MODEL_HEADER = "x-chatgen-model"

local ESCAPES = { ['"'] = '\\"', ['\\'] = '\\\\', ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t' }

local function json_string(s)
  return '"' .. s:gsub('[%c"\\]', function(c) return ESCAPES[c] or string.format("\\u%04x", c:byte()) end) .. '"'
end

local function percent_decode(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

local function respond_error(handle, kind, message, param)
  local e = MODEL_ERRORS[kind]
  local body = '{"error":{"message":' .. json_string(message) .. ',"type":"' .. e[2] .. '","param":' ..
    (param and ('"' .. param .. '"') or "null") .. ',"code":"' .. e[3] .. '"}}'
  -- Like a server error: local_reply_config rewrites local reply bodies, envoy_on_response puts this one back.
  handle:respond({ [":status"] = tostring(e[1]), ["content-type"] = "application/json", ["x-chatgen-error"] = body },
    body)
end

local function model_not_found(handle, model)
  respond_error(handle, "not_found", "The model '" .. model .. "' does not exist", "model")
end

-- GET /v1/models and GET /v1/models/ID. The openai SDK sends a model id's "/" as %2F, which the transcoder
-- leaves encoded in a multi-segment {id=**}: the path carries the decoded id instead (model ids only). The
-- shared gateway answers the list itself, 404s models it does not route and picks the route of the others.
-- True when answered here.
local function models_request(handle, headers, method, path, query)
  if method ~= "GET" then return false end
  if MODELS ~= nil and path == "/v1/models" then
    handle:respond({ [":status"] = "200", ["content-type"] = "application/json" }, MODEL_LIST)
    return true
  end
  local raw = path:match("^/v1/models/(.+)$")
  if raw == nil then return false end
  local id = percent_decode(raw)
  if id ~= raw and id:match("^[%w%._:/@%+%-]+$") then
    headers:replace(":path", "/v1/models/" .. id .. query)
  end
  if MODELS == nil then return false end
  if not MODELS[id] then
    model_not_found(handle, id)
    return true
  end
  headers:add(MODEL_HEADER, id)
  return false
end

function envoy_on_request(handle)
  local headers = handle:headers()
  -- Only the gateway may pick a model's route.
  headers:remove(MODEL_HEADER)
  -- A REST caller's timeout becomes the gRPC deadline: the server stops the request when it passes and the
  -- caller gets 504 with an OpenAI error body (DEADLINE_EXCEEDED below).
  local timeout_ms = headers:get("x-request-timeout-ms")
  headers:remove("grpc-timeout")
  if timeout_ms ~= nil and timeout_ms:match("^%d+$") and #timeout_ms <= 8 then
    headers:add("grpc-timeout", timeout_ms .. "m")
  end
  local method = headers:get(":method")
  local path, query = headers:get(":path"):match("^([^?]*)(.*)$")
  if models_request(handle, headers, method, path, query) then return end
  if MODELS == nil or method ~= "POST" or not ROUTED[path] then return end
  handle:body()
  local request = handle:streamInfo():dynamicMetadata():get("chatgen.request")
  -- Header handles taken before body() yielded are stale now; take them again.
  headers = handle:headers()
  local model = request ~= nil and request["model"] or nil
  if type(model) ~= "string" or model == "" then
    respond_error(handle, "invalid", "'model' is required", "model")
    return
  end
  if not MODELS[model] then
    model_not_found(handle, model)
    return
  end
  headers:add(MODEL_HEADER, model)
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

-- The transcoder names the field it could not parse first ("max_tokens: invalid value ..."): that is `param`.
local function field_of(message_json)
  return message_json:match("^([%w_%.%[%]]+): ")
end

local function openai_error(message_json, status)
  local field = field_of(message_json)
  local param = field and ('"' .. field .. '"') or "null"
  local kind = HTTP_ERRORS[status] or HTTP_ERRORS[500]
  return '{"error":{"message":"' .. message_json .. '","type":"' .. kind[1] .. '","param":' .. param ..
    ',"code":"' .. kind[2] .. '"}}'
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
  if err ~= nil then
    headers:remove("x-chatgen-error")
    headers:replace("content-type", "application/json")
    handle:body(true):setBytes(err)
    return
  end
  if grpc_status ~= nil and grpc_status ~= "0" then
    -- A gRPC error the chatgen handlers did not produce (e.g. from grpc itself), before any body.
    local message = json_string(percent_decode(headers:get("grpc-message") or "upstream error"))
    headers:replace("content-type", "application/json")
    handle:body(true):setBytes(openai_error(message:sub(2, -2), status))
    return
  end
  if status >= 400 then
    -- The transcoder already turned such an error (e.g. DEADLINE_EXCEEDED from grpc's deadline) into its own
    -- {"code":N,"message":...} body; Envoy's own replies are OpenAI-shaped by local_reply_config already.
    local body = handle:body()
    if body ~= nil then
      local bytes = body:getBytes(0, body:length())
      if bytes:sub(1, 8) == '{"code":' then
        body:setBytes(openai_error(status_message(bytes) or "upstream error", status))
      elseif bytes:find('"param":null', 1, true) then
        -- A local reply (e.g. the transcoder rejecting the JSON) already in OpenAI's shape via
        -- local_reply_config, which cannot compute `param`; a quote inside the message would be escaped.
        local field = field_of(status_message(bytes) or "")
        if field ~= nil then
          body:setBytes((bytes:gsub('"param":null', '"param":"' .. field .. '"', 1)))
        end
      end
    end
  end
end
