"""Chains: the adapter protocol every blockchain implements, and one package per chain.

``custody.chains.ethereum`` and ``custody.chains.bitcoin`` each implement
:class:`custody.chains.adapter.ChainAdapter` and the chain-neutral wallet
layer's protocols (``AddressScheme``, ``ChainSpender``, ``Consolidator``); the
wallet subsystem (deposit watcher, withdrawal executor, treasury,
reconciliation) talks to a chain only through them (docs/architecture.md).
"""
