"""Measured speed: interleaved timing, the runtimes compared, and the report (tables and plot)."""
