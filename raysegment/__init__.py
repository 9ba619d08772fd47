"""raysegment: plugin-based distributed batch segmentation on Ray.

The notebook-facing API lives here; the CLI is a thin layer over it.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
