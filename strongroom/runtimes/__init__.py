"""Chain runtimes: the wallet services of one chain wired together (the composition root)."""
