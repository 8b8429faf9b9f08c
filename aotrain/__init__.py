"""aotrain: controlled experiments on compositional generalisation in CLIP-style models.

    aotrain fit                      # toy world, low NMI, CPU, MLflow in ./outputs
    aotrain fit recipe=toy_high_nmi  # same world and budget, high-NMI training joint
"""

__version__ = "0.1.0"
