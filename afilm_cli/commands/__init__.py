"""One module per command: argument parsing only; the work is in library functions."""
