"""variant=moe (being written)."""
