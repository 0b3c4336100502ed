"""`python -m birdclf` runs the CLI."""

from .cli import main

raise SystemExit(main())
