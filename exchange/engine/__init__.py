"""Deterministic matching engine: one price-time priority book per instrument.

The core (`orderbook`, `messages`, `codes`, `instrument`) is pure: commands in,
events out, no clock, no randomness, no I/O. Durability (`journal`,
`snapshot`, `recovery`) and the `strongroom-engine` CLI are the shell around it.
"""

from exchange.engine.codes import ResultCode
from exchange.engine.instrument import Instrument
from exchange.engine.orderbook import OrderBook, ReduceOnlyHook

__all__ = ["Instrument", "OrderBook", "ReduceOnlyHook", "ResultCode"]
