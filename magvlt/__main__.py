"""`python -m magvlt ...` is the `magvlt` command."""
from magvlt.cli import main

raise SystemExit(main())
