"""TorchServe coupling: the caption handler and the loader of exported models."""
