"""Bitcoin: networks and addresses, BIP84 keys, transactions, the embedded regtest chain, the
Bitcoin Core JSON-RPC client, the chain adapter, the UTXO set, the spender, consolidation and the cold (PSBT)
flow. See docs/bitcoin.md.
"""
