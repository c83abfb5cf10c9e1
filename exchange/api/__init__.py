"""The exchange HTTP API."""
