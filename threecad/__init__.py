"""threecad: toolkit and benchmark suite for the 3CAD anomaly-detection dataset and CFRG.

`threecad.bench(...)` and `threecad.load_run(path)` (threecad.api) are loaded on first use, so that
importing the package stays cheap for the command line.
"""

__version__ = "0.1.0"

__all__ = ["bench", "load_run"]


def __getattr__(name: str):
    if name in __all__:
        from threecad import api

        return getattr(api, name)
    raise AttributeError(f"module 'threecad' has no attribute {name!r}")
