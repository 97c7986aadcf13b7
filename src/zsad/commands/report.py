"""``zsad report``: the HTML report of one or more evaluation folders (tables, curves, gallery)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write the HTML report of evaluation results")
    p.add_argument("results", type=Path, nargs="+", metavar="RESULTS_DIR",
                   help="folder(s) written by `zsad eval`; several are compared in one report")
    p.add_argument("--out", type=Path, help="output folder (default: the results folder, if only one)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from zsad.errors import ConfigError
    from zsad.report import Results, write_report

    console = Console(stderr=True)
    if args.out is None and len(args.results) > 1:
        raise ConfigError("several result folders need --out DIR for the combined report")
    results = [Results.load(folder) for folder in args.results]
    path = write_report(results, args.out or args.results[0])
    for r in results:
        if r.data is None:
            console.print(f"{r.folder}: tables only; for curves and a gallery run `zsad eval ... --out {r.folder} "
                          "--report`")
    console.print(f"report written to {path}")
    return 0
