"""sa_pgtq schema version 2: storage and autovacuum settings for a churning queue table.

Revision ID: sa_pgtq_0002
Revises: sa_pgtq_0001
Create Date: 2026-11-25
"""

from alembic import op

from sa_pgtq import schema

revision = "sa_pgtq_0002"
down_revision = "sa_pgtq_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema.upgrade(op, from_version=1, to_version=2, table_name=schema.migration_table_name())


def downgrade() -> None:
    schema.downgrade(op, from_version=2, to_version=1, table_name=schema.migration_table_name())
