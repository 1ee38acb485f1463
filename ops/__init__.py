"""Operating the service: build the model archive, start and stop TorchServe."""
