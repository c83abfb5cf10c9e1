"""Wallets, chain-neutral: hot (sealed HD seed), cold (watch-only) and per-user deposit addresses.

Modules: ``codes`` (44xx result codes), ``hd`` (BIP32/BIP44 derivation),
``models`` (tables), ``wallet`` (the registry; chains plug in an ``AddressScheme``),
``deposit_watcher`` (deposits with confirmations and reorgs), ``withdrawal_executor``
(outgoing transactions: withdrawals, sweeps, consolidation; chains plug in a
``ChainSpender``), ``treasury`` (sweeps to cold, refill proposals, consolidation
through the chain's ``Consolidator``). The implementations are in
custody/chains/ethereum and custody/chains/bitcoin. See docs/wallets.md.
"""
