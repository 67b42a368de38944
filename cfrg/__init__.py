"""CFRG: coarse-to-fine detection with recovery guidance, the 3CAD paper's method."""
