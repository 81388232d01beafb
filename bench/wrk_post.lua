-- Load script for wrk: POST image files as multipart/form-data to the predict route.
-- BENCH_IMAGES: folder with manifest.txt ("<file> <digit>" per line)
-- BENCH_PER_REQUEST: image files per request (parts named "files")
-- BENCH_PATH: route, default /v1/predict
local folder = os.getenv("BENCH_IMAGES")
local per_request = tonumber(os.getenv("BENCH_PER_REQUEST") or "1")
local route = os.getenv("BENCH_PATH") or "/v1/predict"
local boundary = "mnistbench0b7e3c9a"
local requests = {}
local next_index = 1

local function slurp(name)
  local fh = assert(io.open(folder .. "/" .. name, "rb"))
  local data = fh:read("*a")
  fh:close()
  return data
end

local function multipart(files, first)
  local parts = {}
  for k = 0, per_request - 1 do
    local f = files[((first - 1 + k) % #files) + 1]
    parts[#parts + 1] = "--" .. boundary .. "\r\n"
      .. 'Content-Disposition: form-data; name="files"; filename="' .. f.name .. '"\r\n'
      .. "Content-Type: image/png\r\n\r\n" .. f.data .. "\r\n"
  end
  parts[#parts + 1] = "--" .. boundary .. "--\r\n"
  return table.concat(parts)
end

function init(args)
  local files = {}
  for line in io.lines(folder .. "/manifest.txt") do
    local name = line:match("^(%S+)")
    if name then files[#files + 1] = { name = name, data = slurp(name) } end
  end
  local headers = { ["Content-Type"] = "multipart/form-data; boundary=" .. boundary }
  -- Pre-build every request once: the load generator must not be the bottleneck.
  for i = 1, #files do
    requests[i] = wrk.format("POST", route, headers, multipart(files, i))
  end
end

function request()
  local r = requests[next_index]
  next_index = next_index % #requests + 1
  return r
end
