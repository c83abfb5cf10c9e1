"""Result codes of the risk subsystem (the 2xxx range)."""

from enum import IntEnum


class RiskCode(IntEnum):
    """Why the risk layer refused a command; values are stable API codes."""

    OK = 0
    INSUFFICIENT_MARGIN = 2001
    UNKNOWN_INSTRUMENT = 2002
    INSTRUMENT_NOT_TRADING = 2003
    NO_MARK_PRICE = 2004
    UNKNOWN_ACCOUNT = 2005
    DUPLICATE_ORDER_ID = 2006
    INSUFFICIENT_FREE_COLLATERAL = 2007
    INVALID_AMOUNT = 2008
    RISK_LIMIT_EXCEEDED = 2009
    INDEX_STALE = 2010
    INVALID_MARGIN_MODE = 2011
    SETTLEMENT_PENDING = 2012
    INVALID_LEVERAGE = 2013
    POSITION_MARGIN_LOCKED = 2014
    REDUCE_ONLY_EXCEEDS_POSITION = 2015
    PRICE_OUTSIDE_MARK_BAND = 2016
    # Market operation (2020..2029): the scheduler, feeds and operator endpoints.
    PRICE_OVERRIDE_DISABLED = 2020
    MARKET_HALTED = 2021
    MARKET_CANCEL_ONLY = 2022
    INVALID_CONTROL = 2023
    # Entitlements (2030..2039): the caller's KYC tier and jurisdiction (exchange/risk/entitlements.py).
    TRADING_NOT_PERMITTED = 2030
    PRODUCT_NOT_PERMITTED = 2031
    NOTIONAL_CAP_EXCEEDED = 2032
    LEVERAGE_CAP_EXCEEDED = 2033

    @property
    def reason(self) -> str:
        """Return the stable snake_case name used as the API ``error`` field."""
        return self.name.lower()


class RiskError(Exception):
    """An expected refusal by the risk layer: a code and a message naming the values."""

    def __init__(self, code: RiskCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
