"""Operations on built artifacts: bench against PyTorch and onnxruntime, the reproducibility
check, diff, retention."""
