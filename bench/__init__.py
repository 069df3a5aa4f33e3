"""Benchmarks (``make bench``): Hearth and a peer doing the same work in one run, compared by ratio."""
