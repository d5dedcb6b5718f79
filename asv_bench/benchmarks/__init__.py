"""asv benchmarks of numbadam (run from ``asv_bench/``; see docs/performance.md)."""
