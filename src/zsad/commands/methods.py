"""``zsad methods``: the registered methods, what they support and their default backbone."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("methods", help="list the available methods")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from zsad.commands.common import listing
    from zsad.methods import available_methods

    rows = [([name, _yes(cls.zero_shot), _yes(cls.few_shot), _yes(cls.trainable), cls.Config().backbone],
             cls.summary) for name, cls in available_methods().items()]
    print(listing(["name", "zero-shot", "few-shot", "trains", "default backbone"], rows))
    return 0


def _yes(flag: bool) -> str:
    return "yes" if flag else "-"
