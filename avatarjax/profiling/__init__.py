"""Analytic FLOPs, peak throughput by device kind, MFU, traces."""
