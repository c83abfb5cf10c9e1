"""Clearing shards: a whole venue per shard of instruments, fed by its own command stream.

See docs/scale-out.md, "Clearing shards": the shard's command stream is the
replay order; the shard worker (leader) publishes each command's results and
ledger postings, settlement writes the postings, and every API gateway runs
a read replica of the shard (exchange/stream/shard/machine.py) that answers
its own requests from memory.
"""
