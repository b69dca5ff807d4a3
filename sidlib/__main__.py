"""Command line: `python -m sidlib run [--profile NAME|PATH.toml] [--stages 01-02] [--set k=v ...] [--force]`,
`python -m sidlib new-profile --items FILE --interactions FILE` (a starter profile for your tables)."""
from __future__ import annotations

import argparse
import logging
import sys

from . import config, new_profile
from .data.schema import DataError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sidlib", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the notebook chain with papermill")
    r.add_argument("--profile", default=config.DEFAULT_PROFILE, help=f"one of {', '.join(config.list_profiles())}")
    r.add_argument("--stages", help="e.g. 01-02, 03,05 or prep,clean (default: all available)")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a profile value (repeatable), e.g. --set data.min_title_chars=20")
    r.add_argument("--force", action="store_true", help="rerun stages even when up to date")
    sub.add_parser("profiles", help="list the profiles")
    s = sub.add_parser("show", help="print a profile's resolved settings")
    s.add_argument("--profile", default=config.DEFAULT_PROFILE)
    s.add_argument("--set", dest="overrides", action="append", default=[])
    n = sub.add_parser("new-profile", help="write a starter profile for your items and interactions tables")
    new_profile.add_arguments(n)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("papermill").setLevel(logging.WARNING)  # the runner prints its own progress lines

    try:
        if args.cmd == "new-profile":
            return new_profile.run(args)
        if args.cmd == "profiles":
            for p in config.list_profiles():
                print(f"{p:14s} {config.load(p).description}")
            return 0
        overrides = config.parse_overrides(args.overrides)
        if args.cmd == "show":
            import json
            print(json.dumps(config.load(args.profile, overrides).to_dict(), indent=2))
            return 0
        from . import runner
        return runner.run(args.profile, args.stages, overrides, args.force)
    except (config.ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
