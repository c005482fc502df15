"""Built-in functionals with a FIFO queue of past target embeddings (MoCo-style negatives)."""
