"""``python -m trioq.worker``."""

from __future__ import annotations

from . import main

raise SystemExit(main())
