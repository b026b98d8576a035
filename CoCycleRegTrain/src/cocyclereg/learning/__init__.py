"""Training the collaborative cycle: data and augmentation, synthetic pairs, losses, the objective
of each phase and the trainer."""
