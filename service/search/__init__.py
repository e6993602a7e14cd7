"""Vector search: the Qdrant gateway, each tenant's search target and its inspection, the search
step.
"""
