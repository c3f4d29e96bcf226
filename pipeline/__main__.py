"""`python -m pipeline ...` is the `prolongvid` command (so `ray job submit -- python -m pipeline ...` works)."""

from pipeline.cli import main

raise SystemExit(main())
