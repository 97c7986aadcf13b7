"""Command-line entry point: thin argument parsing over the library.

Each subcommand lives in ``zsad/commands/<name>.py`` with ``add_parser(subparsers)`` (which sets
``func``); this module only assembles them and turns :class:`~zsad.errors.ZsadError` into one line on
stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from pathlib import Path

from zsad import __version__
from zsad.errors import ZsadError
from zsad.commands.common import check_names
from zsad.core.io import check_output_dir

COMMANDS = ("datasets", "synth", "methods", "train", "eval", "backbones", "explain", "predict", "calibrate", "report",
            "demo", "serve", "export", "reproduce", "convert-openclip")

# Packages the base (runtime) install leaves out, and the extra that brings each.
EXTRAS = {"torch": "torch", "transformers": "torch", "safetensors": "torch", "huggingface_hub": "torch",
          "scipy": "torch", "matplotlib": "torch", "onnx": "torch", "openvino": "openvino"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zsad", description="Zero- and few-shot visual anomaly detection on frozen foundation models."
    )
    parser.add_argument("--version", action="version", version=f"zsad {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"zsad.commands.{name.replace('-', '_')}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_names(args)
        if isinstance(getattr(args, "out", None), Path):
            check_output_dir(args.out)
        result = args.func(args)
    except ZsadError as err:
        print(f"zsad {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except OSError as err:  # disk full, permission, name too long, ... while writing: one line, the path named
        where = f"{err.filename}: " if err.filename else ""
        print(f"zsad {args.command}: error: {where}{err.strerror or err}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:
        missing = (err.name or "").split(".")[0]
        if missing not in EXTRAS:
            raise
        print(f"zsad {args.command}: error: this needs {missing}, which the runtime install leaves out; install "
              f"it with: pip install 'zsad[{EXTRAS[missing]}]'", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"zsad {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        _leave_process_group()
    return int(result or 0)


def _one_line(err: ZsadError) -> str:
    """The error's own message; a data-loader worker re-raises it with the worker's traceback around it,
    whose last line is ``zsad.errors.DataError: <message>``."""
    lines = str(err).strip().splitlines() or [type(err).__name__]
    last = lines[-1]
    prefix = f"{type(err).__module__}.{type(err).__name__}: "
    return last[len(prefix):] if last.startswith(prefix) else last


def _leave_process_group() -> None:
    """Under torchrun, leave the process group cleanly (a no-op in a single process)."""
    if "torch.distributed" in sys.modules:
        from zsad.engine.distributed import shutdown

        shutdown()


if __name__ == "__main__":
    sys.exit(main())
