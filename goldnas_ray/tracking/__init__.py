"""Tracking in MLflow: the search's run (``search``), the retrain's parent and child runs
(``retrain``), and what they share (``common``).

May import the pure layers (``core``, ``data``, ``files``, ``retrain``, ``run``); never Ray.
"""
