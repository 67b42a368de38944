"""threecad: toolkit and benchmark suite for the 3CAD anomaly-detection dataset and CFRG."""

__version__ = "0.1.0"
