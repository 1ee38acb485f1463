"""Throughput and latency of the captioner: seed-style pipeline, handler in process, TorchServe (`make bench`)."""
