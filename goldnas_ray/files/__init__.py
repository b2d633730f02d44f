"""Run files: what a search leaves on disk and how it is written and read back.

Owns the output folder's layout (``search_files``) and the one atomic-write helper every
writer uses (``atomic``). May import ``goldnas_ray.core``; no Ray, no MLflow. The layer below
``data``: datasets are read through its storage layer.
"""
