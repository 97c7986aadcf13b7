"""``zsad datasets [FORMAT:PATH]``: list the dataset formats, or summarise one dataset per category."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "datasets",
        help="list dataset formats, or summarise a dataset",
        description="Without an argument, list the dataset formats; with FORMAT:PATH, count its images per category.",
    )
    parser.add_argument(
        "dataset", nargs="?", metavar="FORMAT:PATH", help="a dataset to summarise, e.g. mvtec:/data/mvtec"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from zsad.data import FORMATS, open_dataset

    if args.dataset is None:
        width = max(map(len, FORMATS))
        for name, description in FORMATS.items():
            print(f"{name:<{width}}  {description}")
        return 0
    dataset = open_dataset(args.dataset)
    categories = dataset.categories()
    width = max(len("category"), *map(len, categories))
    print(f"{'category':<{width}}  {'train':>6}  {'good':>6}  {'defect':>6}  masks")
    for category in categories:
        train = dataset.records(category, "train")
        test = dataset.records(category, "test")
        anomalous = sum(r.label for r in test)
        masks = "yes" if dataset.has_masks(category) else "no"
        print(f"{category:<{width}}  {len(train):>6}  {len(test) - anomalous:>6}  {anomalous:>6}  {masks}")
    return 0
