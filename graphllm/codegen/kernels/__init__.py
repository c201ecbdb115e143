"""Kernel definitions (TE/TIR) with their hand schedules, one module per kernel class."""
