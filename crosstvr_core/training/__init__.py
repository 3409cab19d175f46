"""Everything that fits weights: the encoder's pretraining on stills, stage 1's temporal head,
the re-ranker, their shared epoch loop and checkpoints, negatives and training lists."""
