"""Clustering study: Equilibrium K-Means (Y. He, arXiv:2402.14490), baselines, α tuning, figures.

Public names::

    EquilibriumKMeans, MiniBatchEquilibriumKMeans, SemiSupervisedEquilibriumKMeans  # estimators
    EKMStats, ekm_weights, centroid_step, ekm_sufficient_statistics, sum_stats
    KMeans, FuzzyKMeans, MaxEntropyFuzzyKMeans, CourseSoftmaxKMeans, make_clusterer, METHODS
    ClusterConfig, ClusterResult, run_cluster_study      # study 2 (aelab.cluster.study)
    alpha_sweep, find_alpha, AlphaSearch, SweepPoint, write_sweep_csv, clustering_scores
    plot_clusterings, plot_ratio_vs_alpha

The torch backend is imported only when ``backend="torch"`` is asked for; the figures use
``matplotlib.figure.Figure`` directly (no pyplot, no GUI backend).
"""

from aelab.cluster.alpha import AlphaSearch, SweepPoint, alpha_sweep, clustering_scores, find_alpha, write_sweep_csv
from aelab.cluster.baselines import (
    METHODS,
    CourseSoftmaxKMeans,
    FuzzyKMeans,
    KMeans,
    MaxEntropyFuzzyKMeans,
    make_clusterer,
)
from aelab.cluster.core import EKMStats, centroid_step, ekm_sufficient_statistics, ekm_weights, sum_stats
from aelab.cluster.ekm import EquilibriumKMeans
from aelab.cluster.figures import plot_clusterings, plot_ratio_vs_alpha
from aelab.cluster.minibatch import MiniBatchEquilibriumKMeans
from aelab.cluster.ssekm import SemiSupervisedEquilibriumKMeans
from aelab.cluster.study import ClusterConfig, ClusterResult, run_cluster_study

__all__ = [
    "EquilibriumKMeans",
    "MiniBatchEquilibriumKMeans",
    "SemiSupervisedEquilibriumKMeans",
    "EKMStats",
    "ekm_weights",
    "centroid_step",
    "ekm_sufficient_statistics",
    "sum_stats",
    "KMeans",
    "FuzzyKMeans",
    "MaxEntropyFuzzyKMeans",
    "CourseSoftmaxKMeans",
    "make_clusterer",
    "METHODS",
    "alpha_sweep",
    "find_alpha",
    "AlphaSearch",
    "SweepPoint",
    "write_sweep_csv",
    "clustering_scores",
    "plot_clusterings",
    "plot_ratio_vs_alpha",
    "ClusterConfig",
    "ClusterResult",
    "run_cluster_study",
]
