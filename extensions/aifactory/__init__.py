"""aifactory: Jupyter on a Slurm GPU cluster."""

__version__ = "0.1.0"
