"""The operations surface: logs, /health, /stats, /metrics."""
