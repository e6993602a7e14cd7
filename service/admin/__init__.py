"""The admin API: auth and audit, adapter uploads and CRUD, activation with the quality gate and
rollback, validation sets, shadow evaluation.
"""
