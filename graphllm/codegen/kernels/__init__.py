"""Kernel templates (TE/TIR) with their hand schedules: one folder per target kind (cpu/), the math they share in common.py."""
