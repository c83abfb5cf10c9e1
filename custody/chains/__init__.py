"""Chain adapters: a small protocol every blockchain implements, and the Ethereum adapter.

Bitcoin plugs in by implementing :class:`custody.chains.adapter.ChainAdapter`;
the wallet subsystem (deposit watcher, withdrawal executor, reconciliation)
talks to chains only through that protocol.
"""
