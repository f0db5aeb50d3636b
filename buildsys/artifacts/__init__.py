"""What an artifact is and where it lives: the content-addressed store, the manifest, the
registry. Never imports torch or TVM."""
