"""Seeded sample inputs for an entry's signature: what it is exported with, and what parity and
bench run it on.

Per input and dtype (config/signature.py): floats uniform in their range ([0, 1) for an image,
the same ``torch.rand`` values as before signatures existed, so batch-1 image entries keep their
parity input), integers uniform in [low, high] (token ids inside the vocabulary, masks 0/1),
bools 0/1. One generator seeded with ``INPUT_SEED`` per call, inputs drawn in declared order: a
batch's first item does not depend on the batch size only for a single input.
"""

from __future__ import annotations

from buildsys.config.spec import BuildSpec

INPUT_SEED = 0


def sample_inputs(spec: BuildSpec, batch: int) -> tuple:
    """One torch tensor per input of ``spec``'s signature, at batch size ``batch``."""
    import torch

    generator = torch.Generator().manual_seed(INPUT_SEED)
    tensors = []
    for item in spec.inputs:
        shape = item.shape_at(batch)
        low, high = item.range
        if item.dtype.startswith("float"):
            x = torch.rand(*shape, generator=generator)
            if (low, high) != (0.0, 1.0):
                x = low + (high - low) * x
            tensors.append(x.to(getattr(torch, item.dtype)))
        else:
            x = torch.randint(int(low), int(high) + 1, shape, generator=generator, dtype=torch.int64)
            tensors.append(x.to(getattr(torch, item.dtype)))
    return tuple(tensors)


def export_batch(spec: BuildSpec) -> int:
    """The batch size an entry is traced at (a range: one torch.export does not specialize)."""
    return spec.batch.export_size if spec.batch.dynamic else spec.batch.min


def export_examples(spec: BuildSpec) -> tuple:
    return sample_inputs(spec, export_batch(spec))


def input_description(spec: BuildSpec) -> str:
    """How the parity input was made, for the manifest."""
    if spec.model.inputs is None:
        return f"torch.rand seed={INPUT_SEED}"
    return f"seed={INPUT_SEED}: floats torch.rand in range, integers torch.randint in range"
