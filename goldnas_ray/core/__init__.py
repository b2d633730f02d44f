"""The GOLD-NAS algorithm in pure PyTorch: the relaxed space and its operators (``space``,
``operations``), architectures as data (``genotype``, ``records``), the networks (``network``,
``supernet``, ``discrete``), exact costs (``costs``), the per-epoch decisions (``schedule``),
the search state and its epoch protocol (``search``, ``comm``), and the run's config.

The bottom layer: imports nothing else of goldnas_ray, and never Ray or MLflow.
"""
