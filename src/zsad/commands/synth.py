"""``zsad synth OUT``: write a procedural anomaly benchmark in the MVTec AD layout."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="write a synthetic anomaly dataset (MVTec layout)",
        description="Write procedural texture and object categories with exact defect masks, readable as mvtec:OUT. "
        "Different seeds give different categories, for training on one set and testing on an unseen one.",
    )
    parser.add_argument("out", type=Path, metavar="OUT", help="an empty or new folder")
    parser.add_argument("--categories", type=int, default=5, help="number of categories (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    parser.add_argument("--train", type=int, default=8, help="normal training images per category (default 8)")
    parser.add_argument("--test-good", type=int, default=6, help="normal test images per category (default 6)")
    parser.add_argument("--test-defect", type=int, default=8, help="defective test images per category (default 8)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from zsad.data.synthetic import write_synthetic

    names = write_synthetic(
        args.out,
        categories=args.categories,
        seed=args.seed,
        size=args.size,
        train_per_category=args.train,
        test_good=args.test_good,
        test_defect=args.test_defect,
    )
    print(f"wrote {len(names)} categories to {args.out}: {', '.join(names)}")
    print(f"read it with mvtec:{args.out}")
    return 0
