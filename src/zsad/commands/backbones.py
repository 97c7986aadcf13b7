"""``zsad backbones``: the registered backbones, their hub ids, default input sizes and local availability."""

from __future__ import annotations

import argparse

# Under the table and in --help, since "no" in the cached column does not mean a name cannot run here.
RANDOM_NOTE = ("--weights random builds any of them offline with seeded random weights: the real architecture, "
               "for speed, memory and shape checks only (its features and text embeddings mean nothing)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("backbones", help="list the available backbones", description=RANDOM_NOTE)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from huggingface_hub import try_to_load_from_cache
    from rich.console import Console
    from rich.table import Table

    from zsad.backbones import BACKBONES

    table = Table(title="backbones", caption=RANDOM_NOTE)
    for column in ("name", "family", "hub id"):
        table.add_column(column, no_wrap=True)
    for column in ("size", "patch", "width", "blocks", "cached", "summary"):
        table.add_column(column)
    for spec in BACKBONES.values():
        if spec.builtin:
            hub_id, cached = "(built in)", "-"
        elif spec.converted:
            hub_id, cached = "(zsad convert-openclip)", "-"
        else:
            hub_id = spec.hub_id
            cached = "yes" if isinstance(try_to_load_from_cache(spec.hub_id, "config.json"), str) else "no"
        table.add_row(spec.name, spec.family, hub_id, str(spec.image_size), str(spec.patch_size), str(spec.width),
                      str(spec.num_layers), cached, spec.summary)
    Console().print(table)
    return 0
