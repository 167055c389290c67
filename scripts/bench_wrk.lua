-- wrk script for scripts/bench: POSTs BENCH_BODY with BENCH_AUTH and prints one JSON line
-- of every figure the harness needs (wrk's own summary lacks p90 and error detail).
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = os.getenv("BENCH_AUTH")
-- More headers, one "Name: value" a line (Portkey's gateway takes its route from them).
for name, value in string.gmatch(os.getenv("BENCH_HEADERS") or "", "([^:\n]+):%s*([^\n]*)\n") do
    wrk.headers[name] = value
end

function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,'
            .. '"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d,'
            .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
        summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
        e.status, e.timeout, latency:percentile(50), latency:percentile(90),
        latency:percentile(99), latency.max, latency.mean))
end
