"""`python -m bench`: see bench/run.py."""

import os

from ops.server import WORKER_ENV

# The in-process pipelines run in the environment the served workers get (OpenMP's wait policy);
# OpenMP reads it when torch is first imported, so it is set before that.
for key, value in WORKER_ENV.items():
    os.environ.setdefault(key, value)

from bench.run import get_args_parser, main  # noqa: E402

main(get_args_parser().parse_args())
