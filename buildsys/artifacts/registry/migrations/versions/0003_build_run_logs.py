"""build runs record their log file

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 07:30:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('build_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('log_path', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('build_runs', schema=None) as batch_op:
        batch_op.drop_column('log_path')
