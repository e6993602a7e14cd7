"""Benchmarks that print numbers (bench/README.md)."""
