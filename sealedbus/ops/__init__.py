"""Operations: the command line (demo, inspect, KDS, benchmarks)."""
