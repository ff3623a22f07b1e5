"""Helpers of the command-line tools that belong to no model part (``benchmark``: the options,
configs and report lines the benchmarks share)."""
