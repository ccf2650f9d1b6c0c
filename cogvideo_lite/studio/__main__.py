"""Serve the studio: python -m cogvideo_lite.studio --ckpt BUNDLE [--host 127.0.0.1] [--port 7860].

Opens the port, loads the bundle (a failure stops here with a one-line message and exit code 2), prints the address,
and serves until Ctrl+C. Videos live in a temporary folder that goes with the server.
"""

from __future__ import annotations

import argparse
import socket
import tempfile
from pathlib import Path

import uvicorn

from cogvideo_lite import cli
from cogvideo_lite.studio.server import create_app
from cogvideo_lite.studio.worker import Studio

DEFAULT_HOST = "127.0.0.1"  # this machine only
DEFAULT_PORT = 7860  # the port gradio demos use, so a user's habits carry over


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cogvideo_lite.studio", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, required=True, help="sampling bundle (python -m cogvideo_lite.bundle)")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to listen on (default {DEFAULT_HOST}: this machine only). WARNING: --host "
                             "0.0.0.0 exposes the studio to the network: anyone who reaches this machine can use its "
                             "compute and see the videos; there is no login")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default %(default)s; 0: any free one)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    return parser


def one_line_errors(parser: argparse.ArgumentParser) -> None:
    """From here on `parser.error` (and so `cli.load_pipeline`) writes one line on stderr and exits with code 2,
    without the usage: a start-up problem (the port, the bundle, the device) is the user's to fix, and the arguments
    were fine."""
    parser.error = lambda message: parser.exit(2, f"{parser.prog}: error: {message}\n")


def listen(parser: argparse.ArgumentParser, host: str, port: int) -> socket.socket:
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
    except (OSError, OverflowError) as error:
        parser.error(f"--host {host} --port {port}: cannot listen there ({getattr(error, 'strerror', None) or error});"
                     " choose another --port, or 0 for any free one")
    return sock


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    one_line_errors(parser)
    cli.setup_logging()
    sock = listen(parser, args.host, args.port)
    pipeline = cli.load_pipeline(parser, args.ckpt, args.device)
    host, port = sock.getsockname()[:2]
    with tempfile.TemporaryDirectory(prefix="cogvideo-studio-") as directory:
        studio = Studio(pipeline, Path(directory))
        studio.start()
        shown = f"[{host}]" if ":" in host else host
        print(f"studio: serving {args.ckpt} at http://{shown}:{port}/ on {pipeline.device} (Ctrl+C stops it)",
              flush=True)
        server = uvicorn.Server(uvicorn.Config(create_app(studio), log_level="warning", timeout_graceful_shutdown=2))
        server.run(sockets=[sock])
        studio.stop()


if __name__ == "__main__":
    main()
