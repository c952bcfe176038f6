-- Makes Envoy's grpc_json_transcoder speak OpenAI's REST dialect in front of chatgen.
--
-- Request:  OpenAI uses one path for streaming and unary calls; `"stream": true` in the JSON body picks the
--           streaming RPC. json_to_metadata (the filter before this one) has parsed the body's top-level
--           `stream` key into dynamic metadata by the time body() returns, so no JSON is parsed here.
-- Response: gRPC errors get OpenAI's error JSON (the server sends it in `x-chatgen-error`), the server's
--           "[DONE]" chunk becomes the SSE terminator `data: [DONE]`, and stream deltas drop the empty
--           `"tool_calls":[]` that the transcoder prints for every repeated field (OpenAI sends it only when
--           a delta carries a tool call). Neither pattern can match inside a JSON string, where quotes are escaped.

local STREAMABLE = { ["/v1/chat/completions"] = true, ["/v1/completions"] = true }

local HTTP_ERROR_TYPES = {
  [400] = "invalid_request_error", [401] = "authentication_error", [403] = "permission_error",
  [404] = "not_found_error", [413] = "invalid_request_error", [429] = "rate_limit_error",
  [500] = "server_error", [501] = "server_error", [503] = "service_unavailable_error", [504] = "timeout_error",
}

local ESCAPES = { ['"'] = '\\"', ['\\'] = '\\\\', ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t' }

local function json_string(s)
  return '"' .. s:gsub('[%c"\\]', function(c) return ESCAPES[c] or string.format("\\u%04x", c:byte()) end) .. '"'
end

local function percent_decode(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

function envoy_on_request(handle)
  local headers = handle:headers()
  -- Only the gateway may ask the server for SSE framing.
  headers:remove("x-chatgen-sse")
  if headers:get(":method") ~= "POST" then return end
  local path, query = headers:get(":path"):match("^([^?]*)(.*)$")
  if not STREAMABLE[path] then return end
  handle:body()
  local request = handle:streamInfo():dynamicMetadata():get("chatgen.request")
  if request ~= nil and request["stream"] == true then
    -- Header handles taken before body() yielded are stale now; take them again.
    headers = handle:headers()
    headers:replace(":path", path .. ":stream" .. query)
    headers:add("x-chatgen-sse", "1")
  end
end

function envoy_on_response(handle)
  local headers = handle:headers()
  local grpc_status = headers:get("grpc-status")
  local err = headers:get("x-chatgen-error")
  -- gRPC plumbing that an OpenAI client has no use for.
  headers:remove("grpc-status")
  headers:remove("grpc-message")
  headers:remove("grpc-accept-encoding")
  if err ~= nil or (grpc_status ~= nil and grpc_status ~= "0") then
    if err == nil then
      -- A gRPC error the chatgen handlers did not produce (e.g. from grpc itself): keep its message.
      local status = tonumber(headers:get(":status")) or 500
      local message = percent_decode(headers:get("grpc-message") or "upstream error")
      err = '{"error":{"message":' .. json_string(message) .. ',"type":"' ..
        (HTTP_ERROR_TYPES[status] or "server_error") .. '","param":null,"code":null}}'
    end
    headers:remove("x-chatgen-error")
    headers:replace("content-type", "application/json")
    handle:body(true):setBytes(err)
    return
  end
  local content_type = headers:get("content-type")
  if content_type == nil or not content_type:find("text/event-stream", 1, true) then return end
  for chunk in handle:bodyChunks() do
    local n = chunk:length()
    if n > 0 then
      local bytes = chunk:getBytes(0, n)
      local changed = false
      if bytes:find('"tool_calls":[]', 1, true) then
        bytes = bytes:gsub(',"tool_calls":%[%]', ""):gsub('{"tool_calls":%[%]', "{")
        changed = true
      end
      if bytes:find('"object":"[DONE]"', 1, true) then
        bytes = bytes:gsub('data: {"id":"","object":"%[DONE%]".-}\n\n', "data: [DONE]\n\n")
        changed = true
      end
      if changed then chunk:setBytes(bytes) end
    end
  end
end
