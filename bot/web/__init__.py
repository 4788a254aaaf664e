"""`tradebot web`: Prometheus metrics at /metrics, health at /healthz, a status page at /."""
