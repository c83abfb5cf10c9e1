"""Ethereum: the web3.py adapter, keys, the spender (nonces, EIP-1559), consolidation, the embedded
chain and the ERC-20 token."""
