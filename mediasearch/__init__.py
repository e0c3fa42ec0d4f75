"""mediasearch: text-to-image search over images in object storage.

The shared library every service imports. Public API, re-exported explicitly:
"""

from mediasearch.errors import MediaSearchError
from mediasearch.settings import Settings, load_settings

__version__ = "0.1.0"

__all__ = ["MediaSearchError", "Settings", "__version__", "load_settings"]
