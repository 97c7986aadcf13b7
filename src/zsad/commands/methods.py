"""``zsad methods``: the registered methods, what they support and their default backbone."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("methods", help="list the available methods")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from zsad.methods import available_methods

    table = Table(title="methods")
    for column in ("name", "zero-shot", "few-shot", "trains", "default backbone", "summary"):
        table.add_column(column)
    for name, cls in available_methods().items():
        config = cls.Config()
        table.add_row(name, _yes(cls.zero_shot), _yes(cls.few_shot), _yes(cls.trainable), config.backbone, cls.summary)
    Console().print(table)
    return 0


def _yes(flag: bool) -> str:
    return "yes" if flag else "-"
