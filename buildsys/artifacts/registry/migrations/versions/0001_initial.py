"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-26 01:19:16.324547
"""
from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('artifacts',
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('model', sa.String(length=200), nullable=False),
    sa.Column('task', sa.String(length=40), nullable=False),
    sa.Column('input_size', sa.String(length=20), nullable=False),
    sa.Column('target', sa.Text(), nullable=False),
    sa.Column('opt_level', sa.Integer(), nullable=False),
    sa.Column('disabled_passes', sa.Text(), nullable=False),
    sa.Column('spec_json', sa.Text(), nullable=False),
    sa.Column('key_material_json', sa.Text(), nullable=False),
    sa.Column('toolchain_json', sa.Text(), nullable=False),
    sa.Column('manifest_digest', sa.String(length=80), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('parity_max_abs', sa.Float(), nullable=True),
    sa.Column('parity_max_rel', sa.Float(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_artifacts'))
    )
    with op.batch_alter_table('artifacts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_artifacts_model'), ['model'], unique=False)

    op.create_table('build_runs',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('label', sa.String(length=400), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('host', sa.String(length=200), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=False),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.Column('duration_s', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_build_runs'))
    )
    with op.batch_alter_table('build_runs', schema=None) as batch_op:
        batch_op.create_index('ix_build_runs_key_started', ['key', 'started_at'], unique=False)

    op.create_table('aliases',
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('artifact_key', sa.String(length=64), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['artifact_key'], ['artifacts.key'], name=op.f('fk_aliases_artifact_key_artifacts'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_aliases'))
    )
    with op.batch_alter_table('aliases', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_aliases_artifact_key'), ['artifact_key'], unique=False)

    op.create_table('artifact_files',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('artifact_key', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('digest', sa.String(length=80), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['artifact_key'], ['artifacts.key'], name=op.f('fk_artifact_files_artifact_key_artifacts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_artifact_files')),
    sa.UniqueConstraint('artifact_key', 'name', name='uq_artifact_files_key_name')
    )
    with op.batch_alter_table('artifact_files', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_artifact_files_digest'), ['digest'], unique=False)

    op.create_table('metrics',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('artifact_key', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('value', sa.Float(), nullable=False),
    sa.Column('unit', sa.String(length=20), nullable=False),
    sa.ForeignKeyConstraint(['artifact_key'], ['artifacts.key'], name=op.f('fk_metrics_artifact_key_artifacts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_metrics')),
    sa.UniqueConstraint('artifact_key', 'name', name='uq_metrics_key_name')
    )


def downgrade() -> None:
    op.drop_table('metrics')
    with op.batch_alter_table('artifact_files', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_artifact_files_digest'))

    op.drop_table('artifact_files')
    with op.batch_alter_table('aliases', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_aliases_artifact_key'))

    op.drop_table('aliases')
    with op.batch_alter_table('build_runs', schema=None) as batch_op:
        batch_op.drop_index('ix_build_runs_key_started')

    op.drop_table('build_runs')
    with op.batch_alter_table('artifacts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_artifacts_model'))

    op.drop_table('artifacts')
