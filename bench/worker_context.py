"""A real TorchServe `Context`, built the way a worker builds it, for driving `handle()` in process.

The in-process benchmark and the handler tests call the handler's own
`initialize`/`handle` with this context, so they run exactly the code a
TorchServe worker runs, without the frontend and its sockets.
"""

from __future__ import annotations

from pathlib import Path


def worker_context(model_dir: Path | str, batch_size: int, *, gpu_id: int | None = None,
                   yaml_config: dict | None = None):
    """A `ts.context.Context` for a batch of `batch_size` requests on `gpu_id` (None: CPU)."""
    import ts
    from ts.context import Context, RequestProcessor
    from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

    metrics = MetricsCacheYamlImpl(str(Path(ts.__file__).parent / "configs" / "metrics.yaml"))
    metrics.initialize_cache()
    manifest = {"model": {"modelName": "captioner", "modelVersion": "1.0", "handler": "caption_handler.py"}}
    context = Context(
        "captioner", str(model_dir), manifest, batch_size, gpu_id, "0.12.0", True, metrics, yaml_config or {}
    )
    context.request_ids = {i: f"request-{i}" for i in range(batch_size)}
    context.request_processor = [RequestProcessor({}) for _ in range(batch_size)]
    metrics.set_request_ids(context.request_ids)
    return context
