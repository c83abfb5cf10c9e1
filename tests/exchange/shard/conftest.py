"""The clearing shard tests: their NATS cluster fixture is tests/exchange/conftest.py's.

pytest runs with --import-mode=importlib, which does not put test directories
on sys.path: this adds ours so the tests import their helper modules.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
