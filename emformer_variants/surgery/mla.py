"""variant=mla (being written)."""
