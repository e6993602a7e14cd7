"""Evaluation of adapters against live data, apart from the admin routes that ask for it: the
quality gate (labelled), the label-free gate and its teacher cache, shadow comparisons, the
uploaded sets they score and their records. Its errors are its own (errors.py); it never
imports service.http, and it encodes through the batcher's background lane, behind live
traffic."""
