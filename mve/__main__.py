"""``python -m mve`` is the ``mve`` command."""

from mve.cli import main

raise SystemExit(main())
