"""Hypothesis settings: "ci" for the test suite (few cases, same ones every run), "fuzz" for `make fuzz`.

No example database is written: a run is reproduced from its seed, and a
failure worth keeping becomes an explicit regression test.
"""

from hypothesis import HealthCheck, settings

# Each case runs the model; drawing a batch of several requests can be large and slow.
RELAXED = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

CI = settings(max_examples=30, deadline=None, derandomize=True, database=None, suppress_health_check=RELAXED,
              print_blob=False)
FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=RELAXED)

settings.register_profile("ci", CI)
settings.register_profile("fuzz", FUZZ)
