"""aelab: learning from images with few labels.

Three studies on one folder of images: a residual U-Net autoencoder (pretrain, fine-tune,
predict), Equilibrium K-Means clustering of its embeddings, and reconstruction-based anomaly
detection; then a report.
"""

__version__ = "0.1.0"

from aelab.errors import AelabError, DataError

__all__ = ["AelabError", "DataError", "__version__"]
