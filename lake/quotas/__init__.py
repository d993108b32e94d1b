"""
Per-tenant quotas: request rates per operation class, shared by every instance
through Redis (``rates``), and storage caps kept in PostgreSQL in each write's own
transaction (``lake.stores.quotas``); both read one ``QuotaBook`` (``policy``):
the settings' defaults and the per-tenant overrides of ``lake quota set``.
"""
