"""`python -m magvlt` (and `torchrun -m magvlt ...`): the command line."""
import sys

from magvlt.cli import main

sys.exit(main())
