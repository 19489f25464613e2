"""Surgery: each variant is a registered, in-place module swap that returns a report
(``registry``), one file per surgery. Importing a surgery module registers it; add a new
one to the import below."""

from emformer_variants.surgery import dense, lowrank, mla, moe  # noqa: F401
