"""CPU (LLVM) kernels: hand-scheduled TE/TIR templates, one module per kernel family."""
