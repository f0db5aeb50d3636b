"""buildsys: PyTorch models -> prebuilt Apache TVM (Relax VM) executables, loaded by key."""

__version__ = "0.5.0"
