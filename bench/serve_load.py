"""Load test of `matryoshka serve` on loopback: 200 concurrent clients for 30 s per configuration.

Each configuration starts its own server process (127.0.0.1, a free port), lets ``--clients`` asyncio
clients post one STS-B sentence each per request (``dimensions=64``) for ``--seconds``, then stops it.
Run side by side in one go: micro-batching (``--max-batch 64``), one text per forward pass
(``--max-batch 1``, the one-request-at-a-time baseline) and a small queue (``--max-queue 64``) that
shows overload answered with quick 503s. Reports throughput, latency percentiles, status counts and
the server's resident memory. Client and server share this machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

from matryoshka.datasets import load_stsb
from report import markdown_table, write_section

CONFIGS = [
    ("micro-batching", ["--max-batch", "64", "--max-queue", "256"]),
    ("one request at a time", ["--max-batch", "1", "--max-queue", "256"]),
    ("micro-batching, small queue", ["--max-batch", "64", "--max-queue", "64", "--max-items", "64"]),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(options: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [str(Path(sys.executable).parent / "matryoshka"), "serve", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--log-level", "warning", *options]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server exited: {server.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.kill()
    raise RuntimeError("server did not start in 300 s")


class Connection:
    """One keep-alive HTTP/1.1 connection on raw asyncio streams: a client far cheaper than the server's
    work per request, so the load generator (on the same cores) is not what limits the measurement."""

    def __init__(self, url: str) -> None:
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, payload: bytes) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        )
        self.writer.write(head.encode() + payload)
        await self.writer.drain()
        status = int((await self.reader.readline()).split()[1])
        headers = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await self.reader.readexactly(int(headers.get("content-length", 0)))
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def client(url: str, texts: list[str], stop_at: float, seed: int, log: list) -> None:
    rng = random.Random(seed)
    connection = Connection(url)
    checked = False
    while time.monotonic() < stop_at:
        body = {"model": "all-MiniLM-L6-v2", "input": rng.choice(texts), "dimensions": 64}
        started = time.monotonic()
        headers: dict[str, str] = {}
        try:
            status, headers, payload = await connection.post("/v1/embeddings", json.dumps(body).encode())
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
            status = type(exc).__name__
            connection.close()
        log.append((status, time.monotonic() - started))
        if status == 200 and not checked:  # each client checks its first answer is a 64-dim unit vector
            vector = np.array(json.loads(payload)["data"][0]["embedding"])
            assert vector.shape == (64,) and abs(np.linalg.norm(vector) - 1) < 1e-5, "bad embedding"
            checked = True
        if status in (429, 503):  # as the openai client does: wait what Retry-After says
            await asyncio.sleep(float(headers.get("retry-after", 1)))
    connection.close()


async def load(url: str, texts: list[str], clients: int, seconds: float) -> tuple[list, float]:
    log: list = []
    started = time.monotonic()
    await asyncio.gather(*(client(url, texts, started + seconds, i, log) for i in range(clients)))
    return log, time.monotonic() - started


def run_config(options: list[str], texts: list[str], clients: int, seconds: float) -> dict:
    server, url = start_server(options)
    memory: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            memory.append(rss_mb(server.pid))
            done.wait(1.0)

    try:
        baseline = rss_mb(server.pid)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        log, elapsed = asyncio.run(load(url, texts, clients, seconds))
        done.set()
        sampler.join()
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
    finally:
        done.set()
        server.terminate()
        server.wait(30)
    statuses = Counter(status for status, _ in log)
    ok = np.array([latency for status, latency in log if status == 200]) * 1000
    refused = np.array([latency for status, latency in log if status in (429, 503)]) * 1000
    batches = [line for line in metrics.splitlines() if line.startswith("matryoshka_batch_texts_")]
    count = float(next(line.split()[-1] for line in batches if "_count" in line))
    total = float(next(line.split()[-1] for line in batches if "_sum" in line))
    return {
        "elapsed": elapsed,
        "ok": int(statuses[200]),
        "throughput": statuses[200] / elapsed,
        "p50": float(np.percentile(ok, 50)) if len(ok) else float("nan"),
        "p99": float(np.percentile(ok, 99)) if len(ok) else float("nan"),
        "refused": int(statuses[429] + statuses[503]),
        "refused_p50": float(np.percentile(refused, 50)) if len(refused) else float("nan"),
        "other": {str(k): v for k, v in statuses.items() if k not in (200, 429, 503)},
        "mean_batch": total / count if count else float("nan"),
        "rss_start": baseline,
        "rss_peak": max(memory) if memory else baseline,
        "rss_end": memory[-1] if memory else baseline,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    pairs = load_stsb("test")
    texts = list(dict.fromkeys(pairs.first + pairs.second))
    results = []
    load_before = os.getloadavg()[0]
    for name, options in CONFIGS:
        print(f"{name}: {args.clients} clients for {args.seconds:g} s ...", flush=True)
        result = run_config(options, texts, args.clients, args.seconds)
        print(f"  {result}", flush=True)
        results.append((name, options, result))
    baseline = next(r for n, _, r in results if n == "one request at a time")
    rows = [
        [
            name,
            " ".join(options),
            result["ok"],
            result["throughput"],
            result["throughput"] / baseline["throughput"],
            result["p50"],
            result["p99"],
            result["refused"],
            result["refused_p50"],
            ", ".join(f"{k}: {v}" for k, v in result["other"].items()) or "none",
            result["mean_batch"],
            f"{result['rss_start']:.0f} / {result['rss_peak']:.0f} / {result['rss_end']:.0f}",
        ]
        for name, options, result in results
    ]
    headers = [
        "configuration",
        "serve options",
        "200 OK",
        "req/s",
        "x one-at-a-time",
        "p50 ms",
        "p99 ms",
        "429/503",
        "503 p50 ms",
        "other statuses/errors",
        "texts per pass",
        "server RSS MB start/peak/end",
    ]
    markdown = (
        f"{args.clients} concurrent clients for {args.seconds:g} s per configuration, each posting one STS-B "
        "test sentence per request to `POST /v1/embeddings` (`dimensions=64`, all-MiniLM-L6-v2, CPU), over "
        "loopback (keep-alive connections on raw asyncio streams); a refused client waits what "
        "`Retry-After` says (1 s), as the openai client does. Each "
        "configuration is a fresh `matryoshka serve` process with its default encoder threads "
        f"({max(1, (os.cpu_count() or 2) - 1)} here: cores - 1; CPU backend: ONNX fp32); the clients "
        "run on the same cores as the server. Latencies are of successful requests, client side. "
        "The machine was shared with other "
        f"jobs: 1-minute load average {load_before:.1f} before the run and {os.getloadavg()[0]:.1f} after "
        "it, so absolute figures are low; the ratio between rows, measured in the same run, is the "
        "result.\n\n" + markdown_table(headers, rows)
    )
    print(markdown)
    if not args.no_write:
        print(f"wrote {write_section('serve_load', markdown)}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
