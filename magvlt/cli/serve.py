"""`magvlt serve`: the JSON API and the page for a run directory, on uvicorn (FastAPI is imported on use)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from magvlt.errors import UserError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a run over HTTP: JSON API (/docs) and a web page (/)",
        description="Loads a run directory and serves /v1/t2i, /v1/i2t, /v1/inpaint, "
        "/v1/infill, /v1/pairs, refinement streams and the page at /.",
    )
    p.add_argument("--model", type=Path, required=True, help="run directory (`magvlt train`, runs/demo/model)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--scorer", type=Path, help="reranker from `magvlt clip train` for --candidates (else likelihood)")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; 1 is faster on a busy machine)")
    p.add_argument("--max-batch", type=int, default=32, help="requests per model call (1: no batching; default 32)")
    p.add_argument("--max-wait-ms", type=float, default=10.0, help="how long a batch waits to fill (default 10)")
    p.add_argument("--max-queue", type=int, default=256, help="waiting requests before 429 (default 256)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    threads = 1 if args.threads is None else args.threads
    if min(args.max_batch, args.max_queue, threads) < 1 or args.max_wait_ms < 0:
        raise UserError("--max-batch, --max-queue and --threads must be >= 1 and --max-wait-ms >= 0")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be in 0..65535, got {args.port}")
    try:
        import uvicorn

        from magvlt.serve.app import Limits, create_app
    except ImportError as e:
        raise UserError(f"magvlt serve needs its extra: pip install 'magvlt[serve]' ({e})") from None
    from magvlt.serve.engine import Engine

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    engine = Engine.load(args.model, device=args.device, scorer=args.scorer)
    limits = Limits(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue)
    print(f"magvlt serve: {engine.name} on http://{args.host}:{args.port} (API: /docs)", file=sys.stderr, flush=True)
    uvicorn.run(create_app(engine, limits), host=args.host, port=args.port, log_level="warning")
    return 0
