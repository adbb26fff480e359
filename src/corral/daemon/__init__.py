"""`corral run` as a service: scheduling, leadership, isolated engine, hot reload, metrics, logs.

One concept per module: `service` (the daemon and its ticks), `leader` (one active
daemon per store), `isolated` (the rule engine in a child process), `watch` (hot
reload), `schedule` (per-policy schedules), `backoff`, `metrics`, `logs`.
"""
