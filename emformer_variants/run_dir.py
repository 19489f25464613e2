"""The import path data/ uses for ``pid_alive`` while data/ is rewritten in parallel; the
function lives in ``emformer_variants.utils.run_dir``. Delete this file once data/ imports it from there."""

from emformer_variants.utils.run_dir import pid_alive  # noqa: F401
