"""trainrelay: one ML training pipeline carried unchanged between workstation, Colab, RunPod and Slurm."""

__version__ = "0.1.0"
