"""Unit, property and negative tests for the core, the in-process key service and the memory bus."""
