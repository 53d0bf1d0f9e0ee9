"""Training machinery that attacks and defences both use: the seeded SGD loop, learning-rate
schedules, augmentation, batched prediction, and resumable checkpoints.

It sits below ``attacks/`` and ``repair/``, so a defence that fine-tunes or distils never imports
an attack. It imports only ``data`` and the package's small utilities.
"""
