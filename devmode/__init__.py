"""Single-process dev mode: all three services in one process, the composition root."""
