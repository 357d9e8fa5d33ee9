"""`python -m npgemma ...` runs the CLI."""

from .cli import main

raise SystemExit(main())
