"""variant=lowrank (being written)."""
