"""`python -m magvlt` (and `torchrun -m magvlt ...`): the command line."""

from magvlt.cli import main

raise SystemExit(main())
