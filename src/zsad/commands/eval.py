"""``zsad eval``: the k-shot evaluation protocol on a dataset, written to results.json / results.md."""

from __future__ import annotations

import argparse
from pathlib import Path

from zsad.commands.common import (
    add_method_arguments, add_tiling_arguments, int_list, method_from_args, str_list, tiling_from_args,
)
from zsad.core.progress import progress_bar


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a method under the zero-/few-shot protocol")
    add_method_arguments(p)
    p.add_argument("--data", required=True, help="dataset as FORMAT:PATH (see `zsad datasets`)")
    p.add_argument("--allow-outside-root", action="store_true", help="let meta.json / VisA CSV entries name "
                   "files outside the dataset folder")
    p.add_argument("--shots", type=int_list, default=None, help="comma-separated k values (default: 0 or 4)")
    p.add_argument("--seeds", type=int, default=5, help="reference draws per k > 0 (default 5)")
    p.add_argument("--categories", type=str_list, default=None, help="comma-separated subset of categories")
    p.add_argument("--batch-size", type=int, default=8, help="images (or tiles) per model call (default 8)")
    add_tiling_arguments(p)
    p.add_argument("--eval-size", type=int, help="with --tile: compare maps and masks at this square size "
                   "(default: the images' own size)")
    p.add_argument("--out", type=Path, default=Path("runs/eval"), help="output folder (default runs/eval)")
    p.add_argument("--compat-metrics", action="store_true", help="also compute pixel_aupro_compat, AUPRO as the "
                   "reference codes compute it (200 thresholds, rescaled FPR axis), to compare with published tables")
    p.add_argument("--report", action="store_true", help="also write the HTML report into --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from zsad.config import to_dict
    from zsad.data import open_dataset
    from zsad.engine import distributed
    from zsad.engine.evaluate import EvalConfig, evaluate, write_results
    from zsad.errors import ConfigError

    dataset = open_dataset(args.data, args.allow_outside_root)
    method, device = method_from_args(args)
    console = Console(stderr=True, quiet=not distributed.is_main())
    if args.report and distributed.world_size() > 1:
        raise ConfigError("--report is not available under torchrun; run `zsad report` on a single process")
    shots = tuple(args.shots) if args.shots else ((0,) if method.zero_shot else (4,))
    config = EvalConfig(shots=shots, seeds=args.seeds, categories=tuple(args.categories) if args.categories else None,
                        batch_size=args.batch_size, precision=args.precision,
                        tiling=tiling_from_args(args, method), eval_size=args.eval_size,
                        compat_aupro=args.compat_metrics)
    collector = _report_collector(args)
    meta = {"method": method.name, "dataset": args.data, "checkpoint": str(args.checkpoint or ""),
            "weights": args.weights, "device": str(device), "eval": to_dict(config),
            "method_config": to_dict(method.config)}
    with progress_bar(console, "evaluating") as advance:
        document = evaluate(method, dataset, config, meta, progress=advance, on_predictions=collector,
                            on_total=advance.total)
    if not distributed.is_main():
        return 0
    write_results(args.out, document)
    if collector is not None:
        report = collector.write(args.out, document)
        console.print(f"report written to {report}")
    _print_summary(console, document)
    console.print(f"results written to {args.out / 'results.json'} and {args.out / 'results.md'}")
    return 0


def _report_collector(args: argparse.Namespace):
    if not args.report:
        return None
    from zsad.report import ReportCollector

    return ReportCollector()


def _print_summary(console, document: dict) -> None:
    from rich.table import Table

    for k, cell in document["summary"].items():
        table = Table(title=f"{document['method']} · {k}-shot · mean over {len(cell['categories'])} categories")
        keys = list(cell["mean"])  # METRIC_KEYS, then the compatibility metrics (see summarize)
        for m in keys:
            table.add_column(m.replace("_", " "), justify="right")
        table.add_row(*[_fmt(cell["mean"][m], cell["std"][m], k) for m in keys])
        console.print(table)


def _fmt(mean: float, std: float, k: str) -> str:
    if mean != mean:
        return "–"
    return f"{100 * mean:.1f}" if k == "0" else f"{100 * mean:.1f}±{100 * std:.1f}"
