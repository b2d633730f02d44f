"""Orchestration on Ray: connecting to a cluster (``cluster``), the search on Ray Train
(``search_driver`` launches, ``search_worker`` runs on each worker), and the retrain on Ray
Tune (``retrain_driver`` launches, ``retrain_trial`` is each trial and the driver's callback).

The only layer that imports Ray. May import every layer below it: ``core``, ``data``,
``files``, ``retrain``, ``run``, ``tracking``.
"""
