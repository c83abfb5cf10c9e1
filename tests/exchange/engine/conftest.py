"""Make the engine test helpers (reference matcher, stream generators) importable.

pytest runs with --import-mode=importlib, which does not put test
directories on sys.path; the helpers have engine-specific names so they
cannot clash with other packages' test helpers.
"""

import sys
from pathlib import Path

_HERE = str(Path(__file__).parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
