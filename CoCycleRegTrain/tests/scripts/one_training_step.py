"""Run one training step and save every gradient and loss term (used by test_distributed).

Usage: one_training_step.py OUTPUT.pt SECTION.FIELD=VALUE...

Without torchrun it runs as one process; under ``torchrun --nproc_per_node N`` each process
takes its share of the global batch and rank 0 saves the (all-reduced) gradients.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from cocyclereg.config import load_config
from cocyclereg.learning.training import Trainer


def main() -> None:
    output, overrides = sys.argv[1], sys.argv[2:]
    trainer = Trainer(load_config(overrides=overrides, preset="cpu-small"))
    record = trainer.train_step(trainer.batch_for_step(0))
    if trainer.is_main:
        gradients = {
            name: parameter.grad.detach().clone()
            for name, parameter in trainer.networks.named_parameters()
            if parameter.grad is not None
        }
        torch.save({"losses": record, "gradients": gradients}, output)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
