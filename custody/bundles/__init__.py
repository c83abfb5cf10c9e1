"""Cold transfers through the offline signer: export unsigned bundles, import signed ones, broadcast."""
