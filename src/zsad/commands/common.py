"""Arguments and helpers shared by several subcommands (method selection, lists)."""

from __future__ import annotations

import argparse
from pathlib import Path

from zsad.errors import ConfigError


def int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def str_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def add_method_arguments(p: argparse.ArgumentParser, checkpoint_help: str = "a trained checkpoint folder",
                         precisions: tuple[str, ...] = ("fp32", "bf16", "fp16")) -> None:
    p.add_argument("--method", help="method name (see `zsad methods`)")
    p.add_argument("--checkpoint", type=Path, help=checkpoint_help)
    p.add_argument("--backbone", help="backbone name (see `zsad backbones`); default: the method's")
    p.add_argument("--weights", help="local weights folder or hub id for the backbone (random: untrained "
                   "architecture, for speed checks only)")
    p.add_argument("--image-size", type=int, help="input size in pixels (default: the method's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a method config field (repeatable), e.g. --set lookup=dense")
    p.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: best available)")
    p.add_argument("--precision", default="fp32", choices=precisions, help="numeric precision (default fp32)")
    p.add_argument("--memory-budget", type=int, metavar="PATCHES", help="reference patches a patch memory keeps "
                   "per layer, chosen by greedy coreset selection as PatchCore does (knn, aprilgan; default: all), "
                   "for many or large (tiled) references")


def check_names(args: argparse.Namespace) -> None:
    """Names a user types, checked before any heavy import: a misspelt backbone is refused at once, not
    after torch and transformers have loaded."""
    from zsad.backbones.specs import get_spec

    if getattr(args, "backbone", None):
        get_spec(args.backbone)


def add_tiling_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tile", help="cut images into tiles of this side in source pixels, or auto (the method's "
                   "input size: every tile at native resolution); default: resize whole images")
    p.add_argument("--overlap", type=float, default=0.25, help="fraction of a tile shared with its neighbour, "
                   "in [0, 0.9) (default 0.25)")
    p.add_argument("--max-pixels", type=float, default=100e6, help="largest image accepted, in pixels "
                   "(default 100e6)")


def tiling_from_args(args: argparse.Namespace, method):
    """The :class:`~zsad.inference.tiling.Tiling` of ``--tile``/``--overlap`` for ``method``, or None."""
    from zsad.inference.tiling import Tiling, parse_tile

    tile = parse_tile(args.tile, method.config.image_size, method.backbone.patch_size)
    return None if tile is None else Tiling(tile, args.overlap)


def method_from_args(args: argparse.Namespace):
    from zsad.engine.build import build_method

    if not args.method and not args.checkpoint:
        raise ConfigError("give --method NAME or --checkpoint DIR")
    device = run_device(args.device)
    method = build_method(args.method, checkpoint=args.checkpoint, backbone=args.backbone, weights=args.weights,
                          image_size=args.image_size, overrides=method_overrides(args), device=device)
    return method, device


def _has_memory(name: str) -> bool:
    from dataclasses import fields

    from zsad.methods.base import method_class

    return "memory_budget" in {f.name for f in fields(method_class(name).Config)}


def method_overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` overrides, with ``--memory-budget`` as the config field it stands for."""
    overrides = list(args.overrides)
    if args.memory_budget is not None:
        if args.memory_budget < 1:
            raise ConfigError(f"--memory-budget must be a positive number of patches, got {args.memory_budget}")
        if args.method and not _has_memory(args.method):
            raise ConfigError(f"--memory-budget applies to methods with a reference patch memory (knn, aprilgan), "
                              f"not {args.method}")
        overrides.append(f"memory_budget={args.memory_budget}")
    return overrides


def run_device(name: str | None):
    """This process's device: its rank's under torchrun (joining the process group), else the best one."""
    from zsad.engine.distributed import init_from_env
    from zsad.core.runtime import pick_device

    return init_from_env(name) or pick_device(name)


def listing(header: list[str], rows: list[tuple[list[str], str]], width: int | None = None) -> str:
    """A table that stays readable at any width, piped or not: one line of short aligned facts per entry,
    then its description wrapped to the width (the terminal's, 80 when piped) and indented beneath."""
    import shutil
    import textwrap

    width = width or shutil.get_terminal_size((80, 24)).columns
    cells = [header] + [facts for facts, _ in rows]
    sizes = [max(len(row[i]) for row in cells) for i in range(len(header))]
    line = lambda facts: "  ".join(f.ljust(s) for f, s in zip(facts, sizes)).rstrip()  # noqa: E731
    out = [line(header)]
    for facts, description in rows:
        out.append(line(facts))
        out += textwrap.wrap(description, width=max(40, width), initial_indent="    ", subsequent_indent="    ",
                             break_on_hyphens=False)
    return "\n".join(out)


def wrapped(text: str) -> str:
    """A paragraph wrapped to the terminal's width (80 when piped)."""
    import shutil
    import textwrap

    return textwrap.fill(text, width=max(40, shutil.get_terminal_size((80, 24)).columns), break_on_hyphens=False)
