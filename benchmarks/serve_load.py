"""Load on `magvlt serve`: closed-loop clients on 127.0.0.1, with batching on (--max-batch 32) and off (1).

    python benchmarks/serve_load.py --model runs/demo/model                 # 32 T2I clients, then 200 mixed
    python benchmarks/serve_load.py --model runs/demo/model --duration 5    # shorter windows

For each mode a fresh server is started (`python -m magvlt serve`, default queue and wait), warmed up with one
request, then loaded twice: 32 clients sending T2I requests back to back, and 200 clients (half T2I, half I2T on
the model's own-size shapes images). Each client sends a request, waits for its answer, and sends the next until
the window (--duration) closes; requests still in flight are then awaited up to --timeout seconds (a request
that takes longer counts as `timeout`). Reported per load: completed requests per second over the whole time,
p50 / p95 latency, and answers by status. A 429 (queue full) is retried after its Retry-After.
Last, the model call alone (no HTTP) is timed at batch 1 and at --max-batch: their ratio bounds what batching
can gain on this machine. Prompts are the shapes world's captions; no seed is sent, so every request has the default seed and a batch is
one model call (see docs/serve.md on seeds).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import httpx
from PIL import Image

from magvlt.data.shapes import render_split


@contextmanager
def serving(model: Path, max_batch: int, port: int, threads: int | None):
    """A `magvlt serve` subprocess on 127.0.0.1:port, yielded once /health answers."""
    extra = ["--threads", str(threads)] if threads else []
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "magvlt",
            "serve",
            "--model",
            str(model),
            "--port",
            str(port),
            "--max-batch",
            str(max_batch),
            *extra,
        ]
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                health = json.load(urllib.request.urlopen(f"{url}/health", timeout=1))
                break
            except OSError:
                if proc.poll() is not None:
                    sys.exit(f"magvlt serve exited with {proc.returncode}")
                time.sleep(0.1)
        else:
            sys.exit("magvlt serve did not answer /health within a minute")
        yield url, health
    finally:
        proc.terminate()
        proc.wait(30)


def workload(health: dict, n: int = 64) -> tuple[list[str], list[bytes]]:
    """Shapes-world captions and PNG scenes at the model's image size."""
    images, captions = render_split("val", n, seed=0, size=health["image_size"][0])
    pngs = []
    for image in images:
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    return captions, pngs


async def client(http: httpx.AsyncClient, k: int, kinds: str, prompts, pngs, until: float, timeout: float, out: list):
    """One closed-loop client: request, wait, repeat until `until`; appends (status, seconds) per request."""
    i = k
    while time.monotonic() < until:
        start = time.monotonic()
        try:
            if kinds[k % len(kinds)] == "t":
                r = await http.post("/v1/t2i", json={"prompt": prompts[i % len(prompts)]}, timeout=timeout)
            else:
                r = await http.post("/v1/i2t", files={"image": ("s.png", pngs[i % len(pngs)])}, timeout=timeout)
            status = r.status_code
        except httpx.TimeoutException:
            status = "timeout"
        except httpx.HTTPError as e:
            status = type(e).__name__
        out.append((status, time.monotonic() - start))
        if status == 429:
            await asyncio.sleep(float(r.headers.get("retry-after", 1)))
        i += len(kinds)


async def load(url: str, clients: int, kinds: str, prompts, pngs, duration: float, timeout: float) -> dict:
    """`clients` closed-loop clients for `duration` seconds (then in-flight requests finish): the figures."""
    results: list = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits) as http:
        start = time.monotonic()
        await asyncio.gather(
            *(client(http, k, kinds, prompts, pngs, start + duration, timeout, results) for k in range(clients))
        )
        elapsed = time.monotonic() - start
    ok = sorted(t for s, t in results if s == 200)
    pct = (lambda q: round(1000 * ok[min(len(ok) - 1, int(q * len(ok)))])) if ok else (lambda q: None)
    return {
        "clients": clients,
        "kinds": kinds,
        "seconds": round(elapsed, 1),
        "ok": len(ok),
        "requests_per_s": round(len(ok) / elapsed, 2),
        "p50_ms": pct(0.5),
        "p95_ms": pct(0.95),
        "mean_ms": round(1000 * statistics.fmean(ok)) if ok else None,
        "statuses": dict(Counter(str(s) for s, _ in results)),
        "server_errors": sum(1 for s, _ in results if not isinstance(s, int) or s >= 500),
    }


def measure(args) -> list[dict]:
    rows = []
    for mode, max_batch in (("batching", args.max_batch), ("one at a time", 1)):
        with serving(args.model, max_batch, args.port, args.threads) as (url, health):
            prompts, pngs = workload(health)
            asyncio.run(load(url, 1, "t", prompts, pngs, 0.1, args.timeout))  # warm-up
            for clients, kinds in ((32, "t"), (args.clients, "ti")):
                row = asyncio.run(load(url, clients, kinds, prompts, pngs, args.duration, args.timeout))
                rows.append({"mode": mode, "max_batch": max_batch, **row})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def model_only(model: Path, max_batch: int, threads: int | None, reps: int = 3) -> dict[int, float]:
    """Milliseconds per image of the model call alone (no HTTP), at batch 1 and at max_batch: the most batching
    can gain is their ratio."""
    import torch

    from magvlt.serve.engine import Engine

    if threads:
        torch.set_num_threads(threads)
    engine = Engine.load(model, device="cpu")
    prompts, _ = workload({"image_size": engine.image_size}, max_batch)
    per_image = {}
    for n in (1, max_batch):
        engine.t2i(prompts[:n], [0] * n, 10, 1)  # warm-up
        best = min(timed(engine.t2i, prompts[:n], [0] * n, 10, 1) for _ in range(reps))
        per_image[n] = round(1000 * best / n, 1)
    return per_image


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def table(rows: list[dict]) -> str:
    head = "| mode | clients | load | req/s | p50 ms | p95 ms | answers by status | 5xx + failed |\n|---|---|---|---|---|---|---|---|\n"
    return head + "".join(
        f"| {r['mode']} (max batch {r['max_batch']}) | {r['clients']} | {'T2I' if r['kinds'] == 't' else 'T2I + I2T'} "
        f"| {r['requests_per_s']} | {r['p50_ms']} | {r['p95_ms']} "
        f"| {', '.join(f'{k}: {v}' for k, v in sorted(r['statuses'].items()))} | {r['server_errors']} |\n"
        for r in rows
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="run directory (runs/demo/model)")
    p.add_argument("--clients", type=int, default=200, help="clients of the second load (default 200)")
    p.add_argument("--duration", type=float, default=15.0, help="seconds each load sends requests (default 15)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds a request may take (default 120)")
    p.add_argument("--max-batch", type=int, default=32, help="the batching server's --max-batch (default 32)")
    p.add_argument("--threads", type=int, help="the server's --threads (default: torch's)")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = p.parse_args()
    rows = measure(args)
    print(table(rows))
    on, off = (next(r for r in rows if r["mode"] == m and r["clients"] == 32) for m in ("batching", "one at a time"))
    print(
        f"32 concurrent T2I: batching gives {on['requests_per_s'] / max(off['requests_per_s'], 1e-9):.1f}x "
        f"the throughput of one at a time; 5xx or failed requests in all loads: {sum(r['server_errors'] for r in rows)}"
    )
    per_image = model_only(args.model, args.max_batch, args.threads)
    print(
        f"the model call alone, T2I, ms per image: {per_image[1]} at batch 1, {per_image[args.max_batch]} at batch "
        f"{args.max_batch} ({per_image[1] / per_image[args.max_batch]:.1f}x)"
    )
    if args.out:
        args.out.write_text(json.dumps({"loads": rows, "model_ms_per_image": per_image}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
