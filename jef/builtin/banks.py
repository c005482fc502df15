"""Built-in functionals with a per-sample memory bank indexed by dataset position (InstDisc-style)."""
