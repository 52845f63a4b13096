"""Studies behind the ``fftbp`` command: crossover sweeps (and, later, accuracy)."""
