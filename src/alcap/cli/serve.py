"""`alcap serve`: the library and the model over HTTP, with the web page."""

from __future__ import annotations

import os
import sys

from .common import add_device_arg, add_quantize_arg, positive_int


def add_serve(sub) -> None:
    p = sub.add_parser("serve", help="serve a song library and a captioning model: HTTP API and web page",
                       description="Start the HTTP service: the web page at /, the JSON API under /api (reference at "
                                   "/docs), health at /healthz. It listens on 127.0.0.1 (this machine only) unless "
                                   "--host says otherwise. Reading (search, songs, audio) is open to anyone who can "
                                   "reach it; adding and removing songs needs --write-token. Caption requests are "
                                   "batched together on one model worker (--max-batch, --max-wait-ms).")
    p.add_argument("library", metavar="LIB", help="library directory (made by `alcap library add`)")
    p.add_argument("--model", required=True, metavar="MODEL_DIR",
                   help="captioning model (a model directory or a Hugging Face Hub repo id); the library's own for "
                        "songs added through the API")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only). 0.0.0.0 exposes the service "
                        "to the network: put it behind a proxy with TLS and set --write-token")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--write-token", metavar="TOKEN",
                   help="allow adding and removing songs with `Authorization: Bearer TOKEN` (or set $ALCAP_WRITE_TOKEN); "
                        "default: read-only")
    p.add_argument("--max-upload-mb", type=float, default=50.0, metavar="MB", help="largest upload (default: 50)")
    p.add_argument("--max-batch", type=positive_int, default=8, metavar="N",
                   help="caption up to N waiting songs together (default: 8; 1 turns batching off)")
    p.add_argument("--max-wait-ms", type=float, default=20.0, metavar="MS",
                   help="how long the model worker waits for more songs to fill a batch (default: 20)")
    p.add_argument("--queue-size", type=positive_int, default=64, metavar="N",
                   help="songs that may wait to be captioned; more are refused with 503 and Retry-After (default: 64)")
    add_device_arg(p)
    add_quantize_arg(p)
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                   help="uvicorn's log level (default: info)")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    from pathlib import Path

    import uvicorn

    from ..serve.app import WRITE_TOKEN_ENV, ServeSettings, create_app

    token = args.write_token or os.environ.get(WRITE_TOKEN_ENV) or None
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"alcap serve: note: listening on {args.host}: anyone who can reach this machine can search the library "
              "and play its songs; use a proxy with TLS in front of it", file=sys.stderr)
    settings = ServeSettings(library=Path(args.library).resolve(), model=args.model, device=args.device,
                             write_token=token, max_upload_mb=args.max_upload_mb, max_batch=args.max_batch,
                             max_wait_ms=args.max_wait_ms, queue_size=args.queue_size, quantize=args.quantize)
    app = create_app(settings)
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    print(f"alcap serve: {settings.library} with {args.model}: open http://{shown}:{args.port}/ "
          f"(API reference: /docs){'; writing on' if token else '; read-only'}", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
