"""Checkpoint files: lazy reading, streaming writing, and the pruning rewrite between them."""
