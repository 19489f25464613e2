import sys

from emformer_variants.sweep.runner import main

sys.exit(main())
