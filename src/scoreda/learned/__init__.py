"""Learned-score data assimilation (seeds 003 and 004): a score network for periodic states, trained by
denoising score matching under a variance-preserving cosine schedule with the surrogate's trainer.

- ``schedule``: μ_t, σ_t of the VP process x_t = μ_t x_0 + σ_t ε.
- ``unet``: ``ScoreUNet`` ε_θ(x_t, t) (circular padding, inverted-bottleneck residual blocks) and
  ``DenoisingLoss``, the module the trainer fits.
- ``params``: ``ScoreNetParams``, the ``scorenet`` config section.
- ``weights``: the consolidated weights file.
"""
