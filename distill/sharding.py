"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for the student, one unit per decoder layer.

Lightning's ``ModelParallelStrategy`` hands the module a device mesh and expects the module to
shard itself in ``configure_model``; this is that step for a Hugging Face causal LM (a PEFT
wrapper included). Each decoder layer becomes one FSDP unit (its parameters are gathered for its
forward and backward only), then the root, which holds the embeddings and the head. The teacher is
never passed here: it is not a submodule of the training module, so it stays whole on every rank
and out of the optimizer.

Runs on CPU with gloo as well as on GPUs (tests/scale/test_fsdp.py runs 2 CPU ranks).
"""

from __future__ import annotations

import torch


def decoder_layer_class(model: torch.nn.Module) -> type[torch.nn.Module]:
    """The class of the model's repeated block, from Hugging Face's ``_no_split_modules``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or [])
    for module in base.modules():
        if type(module).__name__ in names:
            return type(module)
    raise ValueError(f"{type(base).__name__} declares no decoder layer class (_no_split_modules); "
                     "shard it by hand or use hardware=ddp")


def fully_shard_student(student: torch.nn.Module, mesh, reshard_after_forward: bool = True) -> torch.nn.Module:
    """Shard ``student`` over ``mesh`` (a 1-D data-parallel ``DeviceMesh``), layer by layer, in place."""
    from torch.distributed.fsdp import fully_shard

    layer = decoder_layer_class(student)
    for module in student.modules():
        if isinstance(module, layer):
            fully_shard(module, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(student, mesh=mesh, reshard_after_forward=reshard_after_forward)
    return student
