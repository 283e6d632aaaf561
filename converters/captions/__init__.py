"""`gato-tokenize captions`: image-caption pairs -> one row per pair.

`options.py` holds the subcommand's options (`CaptionOptions`), `converter.py` the work units and
the batching of captions (`CaptionConverter`, `make_converter`), `sources.py` reads each format and
`decode.py` turns image bytes into fitted pixels.
"""

from .converter import CaptionConverter, make_converter
from .options import CaptionOptions

__all__ = ["CaptionConverter", "CaptionOptions", "make_converter"]
