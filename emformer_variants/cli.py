"""The import path data/ uses for ``one_line_errors`` while data/ is rewritten in parallel; the
function lives in ``emformer_variants.errors``. Delete this file once data/ imports it from there."""

from emformer_variants.errors import one_line_errors  # noqa: F401
