"""Running a search: the epoch loop both backends share, its console output and its plots.

Owns :func:`~goldnas_ray.run.loop.search_loop` (train an epoch, write the files, log, report),
:func:`~goldnas_ray.run.loop.load_or_create` and the in-process entry point ``run_local``.
May import ``core``, ``data`` and ``files``; trackers and communicators are injected, so it
imports neither Ray nor MLflow.
"""
