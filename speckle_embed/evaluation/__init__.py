"""Few-shot evaluation: episode sampling and scoring (SpeckleNN protocol)."""
from .episodes import *  # noqa: F401,F403
from .episodes import __all__  # noqa: F401
