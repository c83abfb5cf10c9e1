"""Import every table module so ``Base.metadata`` is complete (for Alembic and tests)."""

from custody.db import Base
from custody.ledger import models as ledger_models

__all__ = ["Base", "ledger_models"]
