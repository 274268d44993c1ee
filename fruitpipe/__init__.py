"""fruitpipe: fresh-vs-rotten fruit classification, served on one machine or on AWS."""

import os as _os

# Serving multiplies one 1280-d embedding by small matrices. OpenBLAS's worker threads cost far
# more than they save there (measured: 5.7 ms CPU vs 0.07 ms for 1x1280 @ 1280x1001 on 2 cores)
# and steal cores from concurrent requests. Must be set before numpy is first imported; an
# explicit setting in the environment wins.
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"
