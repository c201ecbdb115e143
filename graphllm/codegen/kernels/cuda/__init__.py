"""CUDA kernels: each op's TE stages (kernels/stages.py) scheduled onto GPU threads (sched.py)."""
