"""``python -m serving [--host H] [--port P] [--workers N]``: the API under uvicorn (``make serve``)."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

import uvicorn

from lakehouse.config import get_settings
from serving.api import METRICS_DIR, create_app


def main(argv: list[str] | None = None) -> None:
    settings = get_settings()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default=settings.api.host)
    parser.add_argument("--port", type=int, default=settings.api.port)
    parser.add_argument("--workers", type=int, default=settings.api.workers, help="uvicorn worker processes")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    if not settings.api.tokens:
        raise SystemExit("no API tokens configured: set api.tokens in conf/<profile>.yaml or LAKEHOUSE__API__TOKENS")
    run = {"host": args.host, "port": args.port, "log_level": args.log_level, "access_log": False}
    if args.workers == 1:
        uvicorn.run(create_app(settings), **run)
        return
    # each worker process builds its own app (models, connections); their metrics meet in a directory of files
    metrics_dir = tempfile.mkdtemp(prefix="fraud-api-metrics-")
    os.environ[METRICS_DIR] = metrics_dir
    try:
        uvicorn.run("serving.api:from_environment", factory=True, workers=args.workers, **run)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
