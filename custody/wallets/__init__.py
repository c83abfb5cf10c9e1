"""Wallets: hot (sealed HD seed), cold (watch-only) and per-user deposit addresses.

Modules: ``codes`` (44xx result codes), ``hd`` (BIP32/BIP44 derivation),
``models`` (tables), ``wallet`` (the registry and signer), ``deposit_watcher``
(deposits with confirmations and reorgs), ``withdrawal_executor`` (outgoing
transactions: withdrawals, sweeps, consolidation), ``treasury`` (sweeps to
cold, refill proposals, consolidation batches). See docs/wallets.md.
"""
