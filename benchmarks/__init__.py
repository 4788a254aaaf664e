"""Benchmarks of the tradebot fleet (`make bench` = `python -m benchmarks.run`).

Performance goals live here, never in timed tests. Every section runs real processes against one
real Redis (an EmbeddedRedis on a free port in a temp dir) and a local paper broker:

- floor.py      the bare Redis round trip and a bare XADD -> XREADGROUP -> XACK loop
- pipeline.py   signal XADD -> order submitted, stage by stage, at fixed signal rates
- scaling.py    throughput and efficiency over N worker processes (50 ms broker), with memory
- taskqueue.py  the same order task through Dramatiq's RedisBroker, side by side (dq_tasks.py: the actor)
- pollerbench.py requests per tick and price age of the price poller
- report.py     the stdout table, docs/benchmarks.md and the PNG plots; findings.py: its "why" section
- profiling.py  py-spy profiles of a worker, the router and the paper broker (run.py --profile)

common.py holds the process handling (every process in its own group, stopped in a finally),
the load feeder and the statistics.
"""
