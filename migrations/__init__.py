"""sa_pgtq's Alembic chain (branch label `sa_pgtq`), installed as `sa_pgtq.migrations`.

A host application adds `sa_pgtq.migrations:versions` to its `version_locations`
and runs `alembic upgrade sa_pgtq@head`; see the README.
"""
