"""``python -m vitlab ...``: the same as the ``vitlab`` command (for machines where it is not installed)."""
import sys

from vitlab.cli import main

sys.exit(main())
