"""The clearing house: accounts, collateral, pre-trade risk, liquidation (pure core)."""
