"""Tracking in MLflow: the search's run (``search``), the retrain's parent and child runs
(``retrain``), a sweep's (``sweep``), and what they share (``common``). Every write to a tracking
server goes through ``buffer.BufferedClient``: an outage after a good start is buffered in the
run's output and replayed, never raised into the run; ``python -m goldnas_ray.tracking.replay
OUT`` sends what a run left waiting.

May import the pure layers (``core``, ``data``, ``files``, ``retrain``, ``run``); never Ray.
"""
