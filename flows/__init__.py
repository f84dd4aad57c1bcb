"""Pipeline layer: Prefect flows that compose the `abp` library, tracked in MLflow."""
