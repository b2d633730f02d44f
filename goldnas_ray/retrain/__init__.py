"""Retraining: the recipe that trains one architecture from scratch (``recipe``), random
baselines of matched FLOPs (``sampling``), what a retrain trains and the checks on it
(``candidates``, ``plan``), and the accuracy/FLOPs report (``report``).

May import ``core``, ``data`` and ``files``; pure PyTorch / pandas, no Ray, no MLflow.
"""
