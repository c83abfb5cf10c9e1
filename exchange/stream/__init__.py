"""Scale-out mode: per-market matching engines as separate processes over NATS JetStream.

See docs/scale-out.md: commands go to a durable stream per market, an engine
worker per market consumes it in stream order with the pure engine
(exchange/engine), and its events flow on their own stream to the
settlement consumer that writes the ledger idempotently.
"""
