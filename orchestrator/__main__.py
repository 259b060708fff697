"""`python -m orchestrator` is the `impsweep` command."""
import sys

from orchestrator.cli import main

sys.exit(main())
