"""Recommenders: graphs, the multimodal GNN, closed-form item-item models, the hybrid, baselines, the
training loop and the validation search."""

import warnings

# Sparse CSR products (graphs, item-item histories) are stable for this use; the beta notice would
# repeat for every table built.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")
