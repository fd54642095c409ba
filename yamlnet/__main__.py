"""`python -m yamlnet` is the `yamlnet` command."""

from .cli import main

raise SystemExit(main())
