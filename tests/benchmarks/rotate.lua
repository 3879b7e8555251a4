-- wrk script: every connection rotates through the request paths listed, one per line, in
-- the file named by WRK_PATHS. Thread k of WRK_THREADS takes paths k, k+T, k+2T, ... so no
-- two requests of a run ask for the same path until the list is used up.
-- done() prints one line "WRK_JSON {...}" that the benchmark parses.

local next_thread = 0

function setup(thread)
   thread:set("index", next_thread)
   next_thread = next_thread + 1
end

function init(args)
   paths = {}
   for line in io.lines(os.getenv("WRK_PATHS")) do
      if #line > 0 then
         paths[#paths + 1] = line
      end
   end
   step = tonumber(os.getenv("WRK_THREADS"))
   counter = index
   wrk.headers["Accept-Encoding"] = "gzip"
end

function request()
   local path = paths[(counter % #paths) + 1]
   counter = counter + step
   return wrk.format("GET", path)
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "errors_connect": %d, '
         .. '"errors_read": %d, "errors_write": %d, "errors_status": %d, "errors_timeout": %d, '
         .. '"p50_us": %d, "p95_us": %d, "p99_us": %d, "max_us": %d}\n',
      summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
      e.status, e.timeout, latency:percentile(50), latency:percentile(95),
      latency:percentile(99), latency.max))
end
