"""``python -m jef`` (what ``accelerate launch -m jef`` runs)."""

from jef.cli import main

raise SystemExit(main())
