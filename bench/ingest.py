"""Benchmark of POST /usage on loopback, against the two ceilings that bound it, in one run.

Run: .venv/bin/python bench/ingest.py [--seconds S] [--dir DIR]   (needs `wrk`: apt-get install wrk)

* the agent runs as a real process (`python -m agent run`) with fsync = "always";
* the load comes from wrk (one thread, keep-alive) in another process;
* ceilings measured in the same run: a bare aiohttp handler that reads the body and
  answers 204 (the Python HTTP ceiling), and N / t_sync, with t_sync the median latency of
  a 4 KiB write + fdatasync on the spool's filesystem (the durability ceiling: N connections
  that each wait for their answer cannot beat one group commit per t_sync);
* for information, not a ceiling: the agent's own HTTP layer (agent/http_server.py)
  answering 204 with no work, which shows what the agent's work per request costs;
* printed: requests/s, p50 and p99 for 8, 64 and 256 connections, 1,000-record arrays in
  records/s, and each rate's ratio to the lower ceiling.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from agent_process import free_port, running_agent, wait_port
from spool import t_sync  # bench/spool.py

RECORD = {
    "timestamp": "2026-11-25T16:20:49.123Z",
    "customerId": "customer-000123",
    "dimensionId": "api-calls",
    "recordValue": "12.5",
    "metadata": {"region": "eu-west-1", "service": "checkout"},
}

WRK_RESULT = """
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d %d %f %f\\n", summary.requests, summary.duration,
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout, latency:percentile(50), latency:percentile(99)))
end
"""  # (how `wrk` below reads a run's result)
WRK_SCRIPT = (
    """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = io.open(os.getenv("BODY_FILE")):read("*a")
"""
    + WRK_RESULT
)

BARE_SERVER = """
import sys
from aiohttp import web
async def usage(request):
    await request.read()
    return web.Response(status=204)
app = web.Application(client_max_size=4 * 1024 * 1024)
app.router.add_post("/usage", usage)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


OWN_HTTP_SERVER = """
import asyncio, sys
from agent.http_server import HttpServer, Limits, Response
async def usage(request):
    return Response(204)
async def main():
    routes = {"/usage": {"POST": usage}}
    server = HttpServer(routes, lambda error: Response(error.status), Limits(4 << 20, 10, 15))
    await server.listen_tcp("127.0.0.1", int(sys.argv[1]))
    await asyncio.Event().wait()
asyncio.run(main())
"""


def wrk(
    url: str, connections: int, seconds: float, body_file: Path | None, script: Path
) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "BODY_FILE": str(body_file or "")},  # None: the script builds its bodies
    ).stdout
    line = next(line for line in out.splitlines() if line.startswith("RESULT"))
    requests, duration_us, bad_status, socket_errors, p50, p99 = (
        float(x) for x in line.split()[1:]
    )
    if bad_status or socket_errors:
        raise RuntimeError(f"{bad_status:.0f} non-2xx answers, {socket_errors:.0f} socket errors")
    return {"rps": requests / (duration_us / 1e6), "p50_ms": p50 / 1000, "p99_ms": p99 / 1000}


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    process.wait(timeout=30)


def warm_up(port: int, array: bytes, segment_bytes: int = 16 * 1024 * 1024) -> int:
    """Post 1,000-record arrays until the agent appends into a zero-filled segment, as it
    does from its second segment on (spool.preallocate); the records posted."""
    connection = http.client.HTTPConnection("127.0.0.1", port)

    def spool_bytes() -> int:
        connection.request("GET", "/status")
        return int(json.loads(connection.getresponse().read())["spool"]["bytes"])

    def post_until(size: int) -> int:
        posted = 0
        while spool_bytes() < size:
            connection.request("POST", "/usage", array, {"Content-Type": "application/json"})
            response = connection.getresponse()
            if response.status != 202:
                raise RuntimeError(f"warm-up got {response.status}: {response.read()[:200]!r}")
            response.read()
            posted += 1000
        return posted

    posted = post_until(segment_bytes // 2 + 1)
    time.sleep(1.0)  # the next segment is zero-filled in the background meanwhile
    posted += post_until(segment_bytes + 1)
    connection.close()
    return posted


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--dir", default=None, help="where the spool goes (its filesystem is measured)"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench/ingest.py needs wrk: apt-get install wrk")
    root = Path(tempfile.mkdtemp(prefix="bench-ingest-", dir=args.dir))
    try:
        run(root, args.seconds)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(root: Path, seconds: float) -> None:
    script = root / "post.lua"
    script.write_text(WRK_SCRIPT)
    one = root / "one.json"
    one.write_text(json.dumps(RECORD))
    array = root / "array.json"
    array.write_text(json.dumps([RECORD] * 1000))
    growing, sync = t_sync(root), t_sync(root, into_zeros=True)
    print(
        f"t_sync (4 KiB write+fdatasync on the spool's filesystem, median): {growing * 1e6:.0f} us"
        f" into a growing file, {sync * 1e6:.0f} us into zeros (the agent's segments; used"
        " below)"
    )
    print(f'wrk -t1, keep-alive, {seconds:.0f} s per point; agent with fsync = "always"\n')

    bare_port, own_port = free_port(), free_port()
    bare = subprocess.Popen([sys.executable, "-c", BARE_SERVER, str(bare_port)])
    own = subprocess.Popen([sys.executable, "-c", OWN_HTTP_SERVER, str(own_port)])
    bare_url, own_url = f"http://127.0.0.1:{bare_port}/usage", f"http://127.0.0.1:{own_port}/usage"
    sections = '[upstream]\nenabled = false\n[log]\nlevel = "WARNING"\n'
    spool, ingest = 'fsync = "always"\n', "max_request_bytes = 4194304\n"
    try:
        wait_port(bare_port)
        wait_port(own_port)
        with running_agent(root, "agent", sections, spool=spool, ingest=ingest) as agent:
            warmed = warm_up(agent.port, array.read_bytes())
            print(f"warm-up: {warmed:,} records, so that the agent appends into a zero-filled")
            print("segment, as it does from its second segment on (spool.preallocate)\n")
            print(
                f"{'conns':>5} {'agent req/s':>11} {'p50 ms':>7} {'p99 ms':>7} {'bare 204/s':>10} "
                f"{'N/t_sync':>9} {'ratio':>6} {'p99 target':>10} {'own 204/s':>10} "
                f"{'agent CPU us/req':>16}"
            )
            for n in (8, 64, 256):
                ceiling_http = wrk(bare_url, n, seconds, one, script)["rps"]
                cpu_before = agent.cpu_s()
                got = wrk(f"{agent.url}/usage", n, seconds, one, script)
                cpu_per_request = (agent.cpu_s() - cpu_before) / (got["rps"] * seconds)
                own_http = wrk(own_url, n, seconds, one, script)["rps"]
                ceiling = min(ceiling_http, n / sync)
                target = f"{3 * sync * 1e3 + 2:.2f}" if n == 8 else "-"
                print(
                    f"{n:>5} {got['rps']:>11.0f} {got['p50_ms']:>7.2f} {got['p99_ms']:>7.2f} "
                    f"{ceiling_http:>10.0f} {n / sync:>9.0f} {got['rps'] / ceiling:>6.2f} "
                    f"{target:>10} {own_http:>10.0f} {cpu_per_request * 1e6:>16.1f}"
                )
            bare_arrays = wrk(bare_url, 8, seconds, array, script)["rps"]
            arrays = wrk(f"{agent.url}/usage", 8, seconds, array, script)
            print(
                f"\n1,000-record arrays, 8 connections: {arrays['rps'] * 1000:,.0f} records/s "
                f"(p99 {arrays['p99_ms']:.1f} ms); bare handler reading the same bodies: "
                f"{bare_arrays * 1000:,.0f} records/s; ratio {arrays['rps'] / bare_arrays:.2f}"
            )
    finally:
        stop(bare)
        stop(own)


if __name__ == "__main__":
    main()
