"""Benchmarks (DESIGN.md section 6)."""
