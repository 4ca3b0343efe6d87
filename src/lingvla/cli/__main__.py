"""`python -m lingvla.cli ...`, the same as the `lingvla` command (what torchrun runs)."""

import sys

from lingvla.cli import main

sys.exit(main())
