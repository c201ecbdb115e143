"""Tools over a loaded model: bench, eval, export, check, dump."""
