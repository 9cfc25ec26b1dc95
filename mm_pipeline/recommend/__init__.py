"""Recommenders: graphs, the multimodal GNN, baselines and the training loop."""
