"""The Dagster layer: assets by stage, resources, the IO manager, jobs. Thin: it calls the core."""
