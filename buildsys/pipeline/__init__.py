"""plan -> build: keys and the sources they cover, the plan, and the build of one entry in a
process of its own (import from PyTorch, compile, parity against PyTorch, publish)."""
