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

    from zsad.backbones import BACKBONES
    from zsad.commands.common import listing, wrapped

    rows = []
    for spec in BACKBONES.values():
        if spec.builtin:
            source, cached = "built in", "-"
        elif spec.converted:
            source, cached = "converted locally", "-"
        else:
            source = spec.hub_id
            cached = "yes" if isinstance(try_to_load_from_cache(spec.hub_id, "config.json"), str) else "no"
        rows.append(([spec.name, spec.family, str(spec.image_size), str(spec.patch_size), str(spec.width),
                      str(spec.num_layers), cached], f"{source} · {spec.summary}"))
    print(listing(["name", "family", "size", "patch", "width", "blocks", "cached"], rows))
    print(f"\n{wrapped(RANDOM_NOTE)}")
    return 0
