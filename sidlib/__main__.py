"""Command line: `python -m sidlib run [--profile NAME|PATH.toml] [--stages 01-02] [--set k=v ...] [--force]`;
`python -m sidlib new-profile --items FILE --interactions FILE` (a starter profile for your tables);
`python -m sidlib serve [--profile NAME] [--model-dir D] [--host H] [--port P]` (sidlib.serve)."""
from __future__ import annotations

import argparse
import json
import logging
import sys

from . import config, new_profile, runner
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
    v = sub.add_parser("serve", help="serve the fine-tuned model over HTTP (OpenAI chat completions, /v1/recommend)")
    v.add_argument("--profile", default=config.DEFAULT_PROFILE, help="a profile name or a .toml file")
    v.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    v.add_argument("--model-dir", default="", help="an HF folder or hub id (default: the profile's 08 model)")
    v.add_argument("--model-name", default="", help="the model id clients name (default: the profile's name)")
    v.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to listen beyond this machine")
    v.add_argument("--port", type=int, default=8000)
    v.add_argument("--request-timeout", type=float, default=120.0,
                   help="seconds a request may take, waiting in the queue included (default 120)")
    v.add_argument("--max-tokens", type=int, default=512, help="the most tokens a request may ask for (default 512)")
    v.add_argument("--max-context", type=int, default=None,
                   help="prompt + reply tokens (default: llm.max_length, the length the model was trained on)")
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
            print(json.dumps(config.load(args.profile, overrides).to_dict(), indent=2))
            return 0
        if args.cmd == "serve":
            return _serve(args, config.load(args.profile, overrides))
        return runner.run(args.profile, args.stages, overrides, args.force)
    except (config.ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _serve(args: argparse.Namespace, cfg: config.Config) -> int:
    try:
        from .serve import Engine, serve  # lazy: torch / transformers, and fastapi / uvicorn (the `serve` extra)
    except ImportError as e:
        print(f"error: {e}; install the server's packages: pip install -e '.[serve]'", file=sys.stderr)
        return 2
    if args.request_timeout <= 0 or args.max_tokens < 1 or (args.max_context is not None and args.max_context < 2):
        print("error: --request-timeout, --max-tokens and --max-context must be positive", file=sys.stderr)
        return 2
    try:
        engine = Engine.load(cfg, args.model_dir, args.model_name, request_timeout=args.request_timeout,
                             max_tokens=args.max_tokens, context=args.max_context)
    except FileNotFoundError as e:  # no 08 model yet: the message names the stage that makes it
        print(f"error: {e}", file=sys.stderr)
        return 2
    serve(engine, args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
