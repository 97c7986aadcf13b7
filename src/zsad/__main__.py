"""``python -m zsad`` (and ``torchrun -m zsad``) runs the CLI."""

import sys

from zsad.cli import main

sys.exit(main())
