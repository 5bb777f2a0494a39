"""Tiny offline model builders for tests and benchmarks."""
