"""TOFC: DPC-KNN token merging + selective hyperprior entropy coding (registers ``tofc``).

Modules: dpc_knn (merging), entropy (Laplacian conditional, selective hyperprior), coder (rANS
payloads), codec (the registered codec), train (``fit``), ablation and feature_distribution
(the ablation table and the feature-distribution figure under results/tofc/).
"""
from .codec import TofcCodec  # noqa: F401
