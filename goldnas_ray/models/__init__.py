"""Retrained networks as models: saved weights and their loading, picking one under a budget, exports."""
