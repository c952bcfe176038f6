-- A REST body's JSON types, checked at the edge as strictly as OpenAI checks them, against the request message's
-- own field types (request_types.json, which chatgen.gateway.request_types renders from the message descriptors:
-- the .proto stays the one definition of the fields). The proto3 JSON mapping that parses the body afterwards is
-- lenient where OpenAI is not: it takes "3" for 3, "yes" for true, "NaN" for a double, a bare value for a
-- one-element array and an object for an array of one message. Here each of those is a 400 naming the field.
--
-- Also here: vLLM's request extensions that chatgen does not serve are a 400 unsupported_parameter naming the key
-- (never a 200 that ignored them). JSON null is "not sent" everywhere, as in OpenAI's API; unknown keys are left
-- to the parser, which ignores them as vLLM does. A body that does not decode, or is not an object, is a 400 too.
--
-- decode(json, text) -> the body, or nil and why it is no JSON object;
-- message_for(json, types, path, body) -> the request message's full name, or nil;
-- check(json, types, name, body) -> nil, or the failure {kind = "invalid" | "unsupported", message, param}.

local M = {}

local EXPECTED = { object = "an object", map = "an object", struct = "an object", array = "an array",
  list = "an array", string = "a string", boolean = "a boolean", integer = "an integer", number = "a number" }

-- What a JSON value is, as the messages name it ("object" and "array" by dkjson's metatables).
local function json_kind(json, value)
  if value == json.null then return "null" end
  local t = type(value)
  if t == "table" then
    local meta = getmetatable(value)
    return meta ~= nil and meta.__jsontype == "array" and "array" or "object"
  end
  return t
end

local GOT = { object = "an object", array = "an array", string = "a string", boolean = "a boolean",
  number = "a number", null = "null" }

local function is_integral(x)
  return x == x and x ~= math.huge and x ~= -math.huge and math.floor(x) == x
end

-- A number as Python's repr writes it in jsonschema's messages (integers in full, not 1.8e+19).
local function number_text(x)
  if is_integral(x) and math.abs(x) < 1e21 then return string.format("%.0f", x) end
  return tostring(x)
end

-- ["messages", 0, "content"] -> "messages[0].content" (array indices are 0-based, as OpenAI names them).
local function param_path(path)
  local out = ""
  for _, part in ipairs(path) do
    if type(part) == "number" then
      out = out .. "[" .. part .. "]"
    elseif out == "" then
      out = part
    else
      out = out .. "." .. part
    end
  end
  return out
end

local function fits(kind, node)
  local t = node.t
  if t == "any" then return true end
  if t == "object" or t == "map" or t == "struct" then return kind == "object" end
  if t == "array" or t == "list" then return kind == "array" end
  if t == "integer" or t == "number" then return kind == "number" end
  return kind == t
end

-- Element-wise, as Python compares jsonschema's paths (deques of keys and indices).
local function path_after(a, b)
  for i = 1, math.min(#a, #b) do
    if a[i] ~= b[i] then
      if type(a[i]) == type(b[i]) then return a[i] > b[i] end
      return tostring(a[i]) > tostring(b[i])
    end
  end
  return #a > #b
end

-- The failure jsonschema's best_match reports: the least deep, and of those the one with the greatest path.
local function note(found, path, failure)
  if found.depth == nil or #path < found.depth or (#path == found.depth and path_after(path, found.path)) then
    found.depth = #path
    found.path = { unpack(path) }
    failure.param = param_path(path)
    found.failure = failure
  end
end

local walk

local function walk_children(json, node, value, path, found)
  local t = node.t
  if t == "object" then
    for _, field in ipairs(node.fields) do
      local inner = value[field[1]]
      if inner ~= nil then
        path[#path + 1] = field[1]
        walk(json, field[2], inner, path, found, true)
        path[#path] = nil
      end
    end
  elseif t == "map" then
    local keys = {}
    for key in pairs(value) do keys[#keys + 1] = key end
    table.sort(keys)
    for _, key in ipairs(keys) do
      path[#path + 1] = key
      walk(json, node.values, value[key], path, found, false)
      path[#path] = nil
    end
  elseif t == "array" then
    for i, inner in ipairs(value) do
      path[#path + 1] = i - 1
      walk(json, node.items, inner, path, found, false)
      path[#path] = nil
    end
  end
end

-- `field`: the value is a field's (null: not sent), not an array's element or a map's value (null: an error).
walk = function(json, node, value, path, found, field)
  local kind = json_kind(json, value)
  if kind == "null" and field then return end
  if not fits(kind, node) or (node.t == "integer" and not is_integral(value)) then
    note(found, path, { kind = "invalid", message = "Invalid type for '" .. param_path(path) .. "': expected " ..
      EXPECTED[node.t] .. ", but got " .. GOT[kind] .. " instead" })
    return
  end
  if node.t == "integer" then
    local name = param_path(path)
    if value > node.max then
      note(found, path, { kind = "invalid", message = "Invalid value for '" .. name .. "': " ..
        number_text(value) .. " is greater than the maximum of " .. node.max_text })
    elseif value < node.min then
      note(found, path, { kind = "invalid", message = "Invalid value for '" .. name .. "': " ..
        number_text(value) .. " is less than the minimum of " .. node.min_text })
    end
    return
  end
  -- A failure found already is less deep than any below: nothing below can be reported.
  if found.depth ~= nil and #path + 1 > found.depth then return end
  walk_children(json, node, value, path, found)
end

-- The first unserved extension the body sends (in the table's order), or one of the options inside a served
-- field that are not served.
local function unserved(json, body, served)
  for _, entry in ipairs(served.keys or {}) do
    local value = body[entry[1]]
    if value ~= nil and value ~= json.null then
      return { kind = "unsupported", message = "'" .. entry[1] .. "': " .. entry[2], param = entry[1] }
    end
  end
  for _, nested in ipairs(served.nested or {}) do
    local inner = body[nested[1]]
    if inner ~= nil and json_kind(json, inner) == "object" then
      for _, entry in ipairs(nested[2]) do
        local value = inner[entry[1]]
        if value ~= nil and value ~= json.null then
          local name = nested[1] .. "." .. entry[1]
          return { kind = "unsupported", message = "'" .. name .. "': " .. entry[2], param = name }
        end
      end
    end
  end
  return nil
end

function M.decode(json, text)
  local ok, body, after, problem = pcall(json.decode, text, 1, json.null)
  if not ok or body == nil then
    return nil, "The request body is not valid JSON: " .. tostring(ok and problem or body or "no value")
  end
  if text:find("%S", after) then
    return nil, "The request body is not valid JSON: extra data at character " .. after
  end
  if json_kind(json, body) ~= "object" then return nil, "The request body must be a JSON object" end
  return body, nil
end

function M.check(json, types, name, body)
  local failure = unserved(json, body, types.unserved[name] or {})
  if failure ~= nil then return failure end
  local found = {}
  walk_children(json, types.messages[name], body, {}, found)
  return found.failure
end

-- The request message a body is for: by its path, or for /invocations by its shape (a chat body has
-- `messages`, a completions body `prompt`; nil for any other, which the filter answers).
function M.message_for(json, types, path, body)
  local name = types.paths[path]
  if name ~= nil or types.shapes[path] == nil then return name end
  for _, shape in ipairs(types.shapes[path]) do
    if body[shape[1]] ~= nil then return shape[2] end
  end
  return nil
end

return M
