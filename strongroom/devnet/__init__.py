"""The devnet: the embedded chains as local servers other processes reach (docs/devnet.md).

``bitcoin`` serves the validating regtest chain behind the Bitcoin Core RPC
subset the platform speaks, its state a replayed journal in the data dir;
``ethereum`` runs anvil (with ``--state`` in the data dir) or, when anvil is
not installed, the in-process py-evm chain behind a JSON-RPC facade;
``control`` is the operator side (mine, fund, reorg) over those RPCs;
``runner`` starts both and writes the environment the platform needs.
Development and testing only: never point production at it.
"""
