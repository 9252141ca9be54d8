"""voxer-stream benchmarks: ``python -m benchmarks <scenario>`` (see benchmarks/README.md)."""
