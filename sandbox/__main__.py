"""CLI for the sandbox hosts (Debian release: $SANDBOX_DEBIAN, 12, 13 or 14).

python -m sandbox image          build (or reuse) the image, print its rootfs path
python -m sandbox up NAME...     boot hosts (reusing running ones), print them as JSON
python -m sandbox down [NAME...] stop the named hosts, or all recorded ones
python -m sandbox status         print the recorded hosts as JSON
python -m sandbox prune          delete cached images no host uses and that are not current
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from . import hosts, image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("image", help="build or reuse the image; print the rootfs path")
    up = commands.add_parser("up", help="boot hosts; print them as JSON")
    up.add_argument("names", nargs="+", metavar="NAME")
    down = commands.add_parser("down", help="stop hosts (all recorded ones if none named)")
    down.add_argument("names", nargs="*", metavar="NAME")
    commands.add_parser("status", help="print the recorded hosts as JSON")
    commands.add_parser("prune", help="delete old cached images that no recorded host uses")
    args = parser.parse_args(argv)
    try:
        if args.command == "image":
            print(image.ensure_image())
        elif args.command == "up":
            print(json.dumps([asdict(h) for h in hosts.boot(args.names)], indent=2))
        elif args.command == "down":
            hosts.shutdown(args.names or None)
        elif args.command == "status":
            print(json.dumps(hosts.status(), indent=2))
        else:
            for path in hosts.prune():
                print(f"removed {path}")
    except (RuntimeError, ValueError) as error:
        print(f"python -m sandbox {args.command}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
