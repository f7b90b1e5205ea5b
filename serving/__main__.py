"""``python -m serving [--host H] [--port P]``: the API under uvicorn (``make serve``)."""

from __future__ import annotations

import argparse

import uvicorn

from lakehouse.config import get_settings
from serving.api import create_app


def main(argv: list[str] | None = None) -> None:
    settings = get_settings()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default=settings.api.host)
    parser.add_argument("--port", type=int, default=settings.api.port)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    if not settings.api.tokens:
        raise SystemExit("no API tokens configured: set api.tokens in conf/<profile>.yaml or LAKEHOUSE__API__TOKENS")
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level, access_log=False)


if __name__ == "__main__":
    main()
