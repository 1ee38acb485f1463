"""`python -m bench`: see bench/run.py."""

from bench.run import get_args_parser, main

main(get_args_parser().parse_args())
