"""The FastAPI service: routes, tenants, adapters in memory, the Qdrant proxy and metrics."""
