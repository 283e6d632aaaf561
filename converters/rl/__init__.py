"""`gato-tokenize rl`: RL episodes and robot demonstrations -> one row per episode.

`options.py` holds the subcommand's options (`RLOptions`), `plan.py` opens the inputs and settles
the `EpisodeSpec` (`make_converter`), `converter.py` turns episodes into rows (`RLConverter`), and
`sources/` reads each format into flat named fields.
"""

from .converter import RLConverter
from .options import RLOptions
from .plan import make_converter

__all__ = ["RLConverter", "RLOptions", "make_converter"]
