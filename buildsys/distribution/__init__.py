"""Artifacts leaving this store: bundle directories, signed release tars and their import,
the S3 remote, ed25519 signing."""
