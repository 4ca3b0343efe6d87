"""`lingvla <command>`: the one entry point of every command.

The command-line code lives in this package, one module per area (lingvla/cli/model.py, train.py,
data.py, sim.py, serve.py); each defines `add_commands(commands, bench)`, where `commands` is the
top-level subparsers object and `bench` the subparsers of `lingvla bench`. A parser sets
`func=callable(args) -> int | None`. Modules keep heavy imports inside their functions so that
`lingvla --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib

COMMAND_MODULES = (
    "lingvla.cli.model",
    "lingvla.cli.train",
    "lingvla.cli.data",
    "lingvla.cli.sim",
    "lingvla.cli.serve",
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

