"""The air-gapped signer: bundle format, offline verification, keystore, signing, CLI.

Runs on a machine that has never been online, with only its own dependencies
(embit, eth-account, cryptography, qrcode) and the pure `policies` package,
whose approval-quorum check it reuses.

Modules, one per noun:
results (SignerCode, SignerRefusal, SignerError), canonical (canonical JSON),
fields (strict JSON field reader), bundle (the unsigned bundle and its
platform signature), builder (platform-side construction), anchors (trust
anchors configured on the signer machine), verification (the pure checks),
bitcoin / ethereum (per-chain transaction checks and signing), signed (the
signed result the platform imports), keystore (passphrase-encrypted BIP39
seed), signing_log (hash-chained record of signatures), network (the
"is this machine online" check), qr (frame transport), cli (`strongroom-signer`).
"""
