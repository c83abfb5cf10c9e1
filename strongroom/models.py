"""Import every table module so ``Base.metadata`` is complete (for Alembic and tests)."""

from custody import freezes as freeze_models
from custody import security_log as security_log_models
from custody import withdrawal_halts as withdrawal_halt_models
from custody.access import models as access_models
from custody.audit import models as audit_models
from custody.bundles import models as bundle_models
from custody.chains.bitcoin import models as bitcoin_models
from custody.compliance import models as compliance_models
from custody.db import Base
from custody.ledger import models as ledger_models
from custody.wallets import models as wallet_models
from custody.withdrawals import models as withdrawal_models
from strongroom.console import models as console_models

__all__ = [
    "Base",
    "access_models",
    "audit_models",
    "bitcoin_models",
    "bundle_models",
    "compliance_models",
    "console_models",
    "freeze_models",
    "ledger_models",
    "security_log_models",
    "wallet_models",
    "withdrawal_halt_models",
    "withdrawal_models",
]
