"""sbmoe-ray: distributed hyperparameter studies of SB-MoE dense retrievers."""

__version__ = "0.1.0"
