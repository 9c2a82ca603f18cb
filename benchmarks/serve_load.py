"""Bounded load test of ``recsys serve`` on 127.0.0.1: req/s, p50/p99 latency, errors and the server's memory.

Run: ``.venv/bin/python benchmarks/serve_load.py [--requests 2000] [--concurrency 20] [--home H]
[--visitors N]``.

``--visitors N`` (needs ``--home`` of a pipeline run: the day's published model) sends ``POST /recommendations``
instead: a visitor's ``N`` random catalog items (seeded), ``k=10``, folded into the published model per request.

It starts the real server (``recsys --home H serve``, uvicorn, one process) on a free port of 127.0.0.1 and sends
``--requests`` GETs from ``--concurrency`` concurrent connections (aiohttp, asyncio): 90 % ``/recommendations/<a
published user>?k=10``, 5 % a new user with ``fallback=true`` (popularity), 5 % an unknown user (404). Without
``--home`` it publishes a synthetic snapshot the size of the bundled data's (610 users x 20 items, 9,742 items)
into a temporary home. Latency is client-side wall time per request (ms), from send to the whole body read; the
server's RSS (MiB) is read from ``/proc`` before and after the load (Linux). Client and server share the
machine's cores: the figures are of both together.
"""

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx
import numpy as np
import pandas as pd

from recsys_pipeline.serving.snapshot import ITEMS, RECOMMENDATIONS, publish_snapshot, read_snapshot
from recsys_pipeline.settings import HomePaths

N_USERS, K, N_ITEMS = 610, 20, 9_742


def synthetic_home(root: Path) -> HomePaths:
    """Publish recommendations (``N_USERS`` x ``K``) and items (``N_ITEMS``) snapshots under ``root``."""
    paths = HomePaths.at(root)
    rng = np.random.default_rng(0)
    items = pd.DataFrame(
        {
            "item_id": [str(i) for i in range(N_ITEMS)],
            "title": [f"Movie {i} (1999)" for i in range(N_ITEMS)],
            "users": np.arange(N_ITEMS, 0, -1),
            "rank": np.arange(1, N_ITEMS + 1),
        }
    )
    recs = pd.DataFrame(
        {
            "user_id": np.repeat([str(u) for u in range(1, N_USERS + 1)], K),
            "rank": np.tile(np.arange(1, K + 1), N_USERS),
            "item_id": [str(i) for i in rng.integers(0, N_ITEMS, N_USERS * K)],
            "score": np.tile(np.linspace(1, 0, K), N_USERS),
            "strategy": "personalized",
            "model_run_id": "synthetic",
            "model_version": "1",
            "produced_on": pd.Timestamp("2026-12-01").date(),
        }
    )
    publish_snapshot(paths, items, ITEMS)
    publish_snapshot(paths, recs, RECOMMENDATIONS)
    return paths


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mib(pid: int) -> tuple[float, float]:
    """``(VmRSS, VmHWM)`` of ``pid`` in MiB, from ``/proc/<pid>/status``."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return tuple(int(fields[name].split()[0]) / 1024 for name in ("VmRSS", "VmHWM"))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far, from ``/proc/<pid>/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def visitor_requests(items: list[str], n: int, per_visitor: int, seed: int = 0) -> list[tuple[str, dict]]:
    """``n`` POSTs of ``per_visitor`` random catalog items each (a visitor's first clicks), ``k=10``."""
    rng = np.random.default_rng(seed)
    return [
        ("/recommendations", {"items": rng.choice(items, size=per_visitor, replace=False).tolist(), "k": 10})
        for _ in range(n)
    ]


def request_paths(users: list[str], n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    kinds = rng.choice(3, size=n, p=[0.90, 0.05, 0.05])
    out = []
    for i, kind in enumerate(kinds):
        if kind == 0:
            out.append(f"/recommendations/{users[rng.integers(len(users))]}?k=10")
        elif kind == 1:
            out.append(f"/recommendations/new-user-{i}?k=10&fallback=true")
        else:
            out.append(f"/recommendations/unknown-{i}?k=10")
    return out


async def drive(base: str, paths: list, concurrency: int) -> tuple[list[float], dict[int, int], float]:
    """Send every request (a GET path, or ``(path, json body)`` for a POST) with ``concurrency`` workers over
    keep-alive connections; returns latencies (ms), status counts (``-1``: connection error or timeout) and wall
    seconds."""
    queue: asyncio.Queue = asyncio.Queue()
    for path in paths:
        queue.put_nowait(path)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(base, connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            while not queue.empty():
                path = queue.get_nowait()
                started = time.perf_counter()
                request = session.post(path[0], json=path[1]) if isinstance(path, tuple) else session.get(path)
                try:
                    async with request as response:
                        await response.read()
                        status = response.status
                except (aiohttp.ClientError, TimeoutError):
                    status = -1
                latencies.append((time.perf_counter() - started) * 1000)
                statuses[status] = statuses.get(status, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return latencies, statuses, wall


def wait_healthy(base: str, server: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode}")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("the server did not become healthy in time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--home", help="a home with published recommendations (default: a synthetic one)")
    parser.add_argument("--visitors", type=int, default=0, help="POST visitors of N items each (needs --home)")
    args = parser.parse_args()
    if args.visitors and not args.home:
        parser.error("--visitors needs --home: a home whose recommendations published their model")
    with tempfile.TemporaryDirectory() as tmp:
        paths = HomePaths.at(args.home) if args.home else synthetic_home(Path(tmp) / "home")
        users = sorted(read_snapshot(paths)["user_id"].unique())
        catalog = read_snapshot(paths, ITEMS)["item_id"].astype(str).tolist()

        def requests(n: int, seed: int = 0) -> list:
            if args.visitors:
                return visitor_requests(catalog, n, args.visitors, seed)
            return request_paths(users, n, seed)

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        recsys = str(Path(sys.executable).with_name("recsys"))
        env = {**os.environ, "RECSYS_API_KEY": ""}  # the load test measures the open API
        server = subprocess.Popen(
            [recsys, "--home", str(paths.root), "serve", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_healthy(base, server)
            asyncio.run(drive(base, requests(50, seed=1), args.concurrency))  # warm-up (and model load), not counted
            rss_before, _ = rss_mib(server.pid)
            cpu_before, client_before = cpu_seconds(server.pid), time.process_time()
            latencies, statuses, wall = asyncio.run(drive(base, requests(args.requests), args.concurrency))
            rss_after, peak = rss_mib(server.pid)
            server_cpu, client_cpu = cpu_seconds(server.pid) - cpu_before, time.process_time() - client_before
        finally:
            server.terminate()
            server.wait(30)
    lat = np.asarray(latencies)
    errors = sum(n for status, n in statuses.items() if status < 0 or status >= 500)
    home = args.home or "synthetic"
    kind = f"POST visitors of {args.visitors} items" if args.visitors else "GET mix"
    print(f"home: {home} ({len(users)} users); {args.requests} requests ({kind}), concurrency {args.concurrency}")
    print(f"throughput   {args.requests / wall:8.1f} req/s  ({wall:.2f} s)")
    p50, p99 = np.percentile(lat, [50, 99])
    print(f"latency      p50 {p50:6.1f} ms   p99 {p99:6.1f} ms   max {lat.max():6.1f} ms")
    print(f"statuses     {dict(sorted(statuses.items()))}  errors (5xx or connection) {errors}")
    print(f"CPU          server {server_cpu:.2f} s, client {client_cpu:.2f} s over {wall:.2f} s of wall time")
    print(f"server RSS   {rss_before:.1f} MiB before, {rss_after:.1f} MiB after, peak {peak:.1f} MiB")


if __name__ == "__main__":
    main()
