"""The request engine: embed items, admission and batching, the batch cost model, the raw query-
vector cache, warm-up, encoding (prepare, run, finish).
"""
