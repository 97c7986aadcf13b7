"""``zsad reproduce PAPER``: a paper's own protocol end to end, measured next to its published tables."""

from __future__ import annotations

import argparse
from pathlib import Path

from zsad.commands.common import run_device
from zsad.protocols import PAPERS, Protocol


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="run a paper's protocol and compare with its published numbers",
                       description="Train (or load) and evaluate exactly a paper's protocol, then write the "
                                   "measured and published numbers side by side (reproduce.md / reproduce.json).")
    papers = p.add_subparsers(dest="paper", metavar="PAPER")
    papers.required = True
    for paper in PAPERS:
        _add_paper(papers, paper)


def _add_paper(papers: argparse._SubParsersAction, paper: str) -> None:
    protocol = Protocol.load(paper)
    p = papers.add_parser(paper, help=f"{protocol.title} ({protocol.citation})",
                          description=_describe(protocol), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", action="append", required=True, metavar="NAME=FORMAT:PATH",
                   help=f"a dataset of the protocol, e.g. {protocol.targets[0]}=mvtec:/data/mvtec (repeatable; "
                        f"names: {', '.join(protocol.datasets())})")
    p.add_argument("--protocol", choices=["paper", "code"], default="paper",
                   help="paper: what the paper writes (deployment-safe, default); code: what the public code ran, "
                        "test-set statistics included, each such option named in the report")
    p.add_argument("--checkpoint", type=Path, help="evaluate this trained checkpoint instead of training")
    p.add_argument("--backbone", help=f"stand-in backbone (default {protocol.backbone}); recorded as a deviation")
    p.add_argument("--weights", help="local weights folder or hub id for the backbone")
    p.add_argument("--image-size", type=int, help=f"input size (default {protocol.image_size}); a deviation")
    p.add_argument("--seeds", type=int, help="reference draws per k > 0 (default: the protocol's); a deviation")
    p.add_argument("--epochs", type=int, help="training epochs instead of the protocol's; a deviation")
    p.add_argument("--steps", type=int, help="a budget of optimiser steps instead of epochs; a deviation")
    p.add_argument("--max-steps-per-epoch", type=int, help="cap optimiser steps per epoch; a deviation")
    p.add_argument("--train-set", dest="train_overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a training config field (repeatable); a deviation")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a method config field for every target (repeatable); a deviation")
    p.add_argument("--batch-size", type=int, default=8, help="images per model call in evaluation (default 8)")
    p.add_argument("--allow-outside-root", action="store_true", help="let index files name images outside the "
                   "dataset folder")
    p.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: best available)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="autocast precision")
    p.add_argument("--out", type=Path, default=Path(f"runs/reproduce/{paper}"),
                   help=f"output folder (default runs/reproduce/{paper})")
    p.set_defaults(func=run)


def _describe(protocol: Protocol) -> str:
    auxiliary = "training-free" if not protocol.trains else ", ".join(
        f"{target} <- {protocol.auxiliary_for(target)}" for target in protocol.targets)
    seeds = ", ".join(f"{name}: {settings['seeds']}" for name, settings in protocol.flavours.items())
    return (f"{protocol.title}\n{protocol.citation}\n\n"
            f"method {protocol.method} on {protocol.backbone} at {protocol.image_size} px\n"
            f"targets (<- auxiliary training set): {auxiliary}\n"
            f"shots: {', '.join(map(str, protocol.shots))}; reference draws per k: {seeds}\n"
            f"published cells shipped: {sum(len(c['metrics']) for c in protocol.published)}")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from zsad.config import parse_override
    from zsad.data import open_dataset
    from zsad.engine.reproduction import Deviations, reproduce
    from zsad.errors import ConfigError
    from zsad.report.published import write_report

    protocol = Protocol.load(args.paper)
    datasets = {}
    for spec in args.data:
        name, sep, location = spec.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--data {spec!r} must be NAME=FORMAT:PATH (e.g. {protocol.targets[0]}=mvtec:/data/...)")
        datasets[name.strip().lower()] = open_dataset(location, args.allow_outside_root)
    train = {key: value for key, value in (("epochs", args.epochs), ("steps", args.steps),
                                           ("max_steps_per_epoch", args.max_steps_per_epoch)) if value is not None}
    train |= dict(parse_override(o) for o in args.train_overrides)
    deviations = Deviations(backbone=args.backbone, weights=args.weights, image_size=args.image_size,
                            seeds=args.seeds, train=train, overrides=list(args.overrides), checkpoint=args.checkpoint)
    console = Console(stderr=True)
    reproduction = reproduce(protocol, args.protocol, datasets, deviations, args.out, run_device(args.device),
                             args.batch_size, args.precision, log=console.log)
    report = write_report(args.out, reproduction)
    measured = [r for r in report["rows"] if r["status"] == "measured" and r["published"] is not None]
    console.print(f"{len(measured)} published cell(s) measured; side-by-side table in {args.out / 'reproduce.md'}")
    return 0
