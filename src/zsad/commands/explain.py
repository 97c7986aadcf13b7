"""``zsad explain``: which dictionary atoms a trained SPG model's guides use, and which drive its decisions."""

from __future__ import annotations

import argparse
from pathlib import Path

from zsad.commands.common import str_list


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="trace a trained SPG model's guides and decisions to dictionary atoms")
    p.add_argument("--checkpoint", type=Path, required=True, help="a trained spg checkpoint folder")
    p.add_argument("--data", help="dataset as FORMAT:PATH: also find the atoms driving each category's anomalies")
    p.add_argument("--categories", type=str_list, default=None, help="comma-separated subset of categories")
    p.add_argument("--top", type=int, default=10, help="atoms listed per guide and per category (default 10)")
    p.add_argument("--shared-fraction", type=float, default=0.5,
                   help="an atom driving at least this fraction of the categories is shared (default 0.5)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--weights", help="local weights folder or hub id for the backbone")
    p.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: best available)")
    p.add_argument("--out", type=Path, default=Path("runs/explain"), help="output folder (default runs/explain)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console

    from zsad.core import io
    from zsad.engine.build import build_method
    from zsad.errors import ConfigError
    from zsad.methods.spg.explain import top_atoms
    from zsad.report.spg import csv_table, explanation_figure, markdown_table
    from zsad.core.runtime import pick_device

    console = Console(stderr=True)
    if args.top < 1 or not 0 < args.shared_fraction <= 1:
        raise ConfigError("--top must be at least 1 and --shared-fraction in (0, 1]")
    method = build_method(checkpoint=args.checkpoint, weights=args.weights, device=pick_device(args.device))
    if method.name != "spg":
        raise ConfigError(f"{args.checkpoint}: explain reads spg checkpoints, this one is {method.name!r}")
    with torch.inference_mode():
        codes = method.codes(averaged=True)
    guide_atoms = top_atoms(codes, args.top)
    drivers = _drivers(method, args, console) if args.data else []
    outputs = {"guides.md": markdown_table(guide_atoms), "guides.csv": csv_table(guide_atoms)}
    if args.data:
        outputs |= {"drivers.md": markdown_table(drivers), "drivers.csv": csv_table(drivers)}
    for name, text in outputs.items():
        io.write_text(args.out / name, text)
    with io.atomic_path(args.out / "explain.png") as tmp:
        explanation_figure(guide_atoms, drivers).savefig(tmp, format="png", dpi=120)
    for name in ("global-anomaly", "local-anomaly"):
        atoms = ", ".join(f"{r.atom} ({r.coefficient:.3f})" for r in guide_atoms if r.guide == name)
        console.print(f"{name}: {atoms or 'no active atoms'}")
    if args.data:
        shared = sorted({d.atom for d in drivers if d.kind == "shared"})
        console.print(f"shared driving atoms: {', '.join(map(str, shared)) or 'none'}")
    console.print(f"explanation written to {args.out}")
    return 0


def _drivers(method, args: argparse.Namespace, console):
    """Per-category driving atoms over the test split of ``--data``."""
    from zsad.data import open_dataset
    from zsad.engine.explain import category_drivers
    from zsad.core.progress import progress_bar

    dataset = open_dataset(args.data)
    categories = args.categories or dataset.categories()
    with progress_bar(console, "attributing") as advance:
        advance.total(sum(len(dataset.records(c, "test")) for c in categories if c in dataset.categories()))
        return category_drivers(method, dataset, categories, args.batch_size, args.top, args.shared_fraction,
                                progress=advance)
