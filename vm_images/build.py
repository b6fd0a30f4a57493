"""``python -m vm_images.build [bundle ...]``: build the sandbox image, showing progress."""

from __future__ import annotations

import argparse
import sys
import time

import docker

from .builder import ensure_image, prune_images
from .bundles import BUNDLES, DEFAULT


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vm_images.build", description=__doc__)
    parser.add_argument(
        "bundles",
        nargs="*",
        help=f"bundles (default: {' '.join(DEFAULT)}; known: {', '.join(sorted(BUNDLES))})",
    )
    parser.add_argument("--rebuild", action="store_true", help="build even if the tag exists")
    parser.add_argument("--quiet", action="store_true", help="print only the tag")
    parser.add_argument(
        "--prune", action="store_true", help="then remove older sandbox images no container uses"
    )
    args = parser.parse_args(argv)
    started = time.monotonic()

    def progress(line: str) -> None:
        if not args.quiet:
            print(f"[{time.monotonic() - started:6.1f}s] {line}", file=sys.stderr, flush=True)

    tag = ensure_image(args.bundles or None, progress=progress, rebuild=args.rebuild)
    if args.prune:
        client = docker.from_env()
        for old in prune_images(client, keep=[tag]):
            progress(f"removed {old}")
        client.close()
    print(tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
