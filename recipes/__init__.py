"""Runnable benchmark recipes for odernn (``python -m recipes.<name> --help``).

The recipes own command lines, progress bars, plots and files; the library (:mod:`odernn`) owns none of these.
Shared machinery (flags, seeding, checkpoints, metrics, DDP, comparison plots) lives in :mod:`recipes._common`.
"""
