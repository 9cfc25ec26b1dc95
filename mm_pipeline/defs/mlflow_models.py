"""Logging the pipeline's torch encoders to MLflow as models."""

from __future__ import annotations

import numpy as np
import torch


def log_torch_module(module: torch.nn.Module, name: str, example: np.ndarray) -> str:
    """Log ``module`` with MLflow's pickle-free ``pt2`` (torch.export) format; returns the model URI.

    ``example`` is one input batch; it fixes the exported graph and the signature.
    """
    import mlflow
    from mlflow.models import infer_signature

    module = module.eval()
    with torch.no_grad():
        output = module(torch.from_numpy(example)).numpy()
    info = mlflow.pytorch.log_model(
        module,
        name=name,
        serialization_format="pt2",
        input_example=example,
        signature=infer_signature(example, output),
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"],
    )
    return info.model_uri
