"""Operability: Prometheus metrics (metrics.py), structured logs (logging.py), and the correlation id that ties a
device message to what it caused (correlation.py)."""
