"""Baseline anomaly-detection methods that the 3CAD paper compares, on the harness."""
