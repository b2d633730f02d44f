"""Sweeps: many searches over a grid of config values and seeds, planned, run and reported."""
