"""Property-based fuzzing of request parsing and image decoding (`make fuzz`, tests/test_fuzz_*.py)."""
