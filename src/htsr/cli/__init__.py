"""The ``htsr`` command line."""
