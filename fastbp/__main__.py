"""``python -m fastbp``: the same as the ``fastbp`` console script."""

from fastbp.cli import main

raise SystemExit(main())
