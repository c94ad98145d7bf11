"""The ``litevit`` command: each subcommand parses its options, calls one library function, prints."""

from __future__ import annotations

import argparse
import logging
import sys

from . import create_model, get_variant, list_models
from .flops import count_params


def _cmd_list(args: argparse.Namespace) -> int:
    names = [n for pattern in args.patterns or ["*"] for n in list_models(pattern)]
    if args.markdown:
        from .registry import variants_markdown

        print(variants_markdown(names))
        return 0
    for name in names:
        paper = get_variant(name).paper
        line = f"{name:24s} {paper.params_m:6.1f}M params {paper.macs_m:7.0f}M MACs"
        if paper.top1 is not None:
            line += f"  top-1 {paper.top1:.1f}%"
        if args.verbose:
            line += f"  (built: {count_params(create_model(name)) / 1e6:.2f}M params)"
        print(line)
    return 0


def _add_list(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list registered models with their paper records")
    p.add_argument("patterns", nargs="*", help="shell-style patterns, e.g. 'levit_*'")
    p.add_argument("--markdown", action="store_true", help="print the README table")
    p.add_argument("--verbose", action="store_true", help="also build each model and count its parameters")
    p.set_defaults(func=_cmd_list)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="litevit", description=__doc__)
    parser.add_argument("--log-level", default="WARNING", help="logging level (DEBUG, INFO, WARNING)")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_list(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"litevit {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
