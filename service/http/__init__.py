"""The HTTP surface: routes, the fast path, request/response schemas, the error table, middleware,
rate limits, /info.
"""
