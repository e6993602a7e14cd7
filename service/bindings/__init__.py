"""Tenants and their adapters: the tenant registry (keys), each tenant's active adapter with sync,
fallback and demotion, the adapter LRU, replica sync.
"""
