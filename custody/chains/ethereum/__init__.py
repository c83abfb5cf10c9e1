"""Ethereum: the web3.py adapter, the embedded chain, the ERC-20 token and EIP-1559 transactions."""
