"""The spectral engine: sources -> matrices -> eigenvalues -> fits and metrics -> Analysis."""
