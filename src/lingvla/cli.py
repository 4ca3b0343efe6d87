"""`lingvla <command>`: one entry point; each area of the package registers its own commands.

Each module in COMMAND_MODULES defines `add_commands(commands, bench)`, where `commands` is the
top-level subparsers object and `bench` the subparsers of `lingvla bench`. A parser sets
`func=callable(args) -> int | None`. Modules keep heavy imports inside their functions so that
`lingvla --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = (
    "lingvla.model.commands",
    "lingvla.train.commands",
    "lingvla.data.commands",
    "lingvla.sim.commands",
    "lingvla.serve.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lingvla", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    bench_parser = commands.add_parser("bench", help="measure speed and memory; prints JSON lines")
    bench = bench_parser.add_subparsers(dest="bench_target", metavar="TARGET")
    bench_parser.set_defaults(func=lambda args: bench_parser.print_help() or 2)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(commands, bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
