"""Where the GPUs are: the cluster's resources, not the machine running the driver."""

from __future__ import annotations

import ray
import torch


def cluster_has_gpus() -> bool:
    """GPUs anywhere in the connected Ray cluster (else on this machine, when not connected).

    On a cluster the driver (a job's entry point, `serve run`) usually runs on a CPU head
    node, so `torch.cuda.is_available()` there would keep every worker and replica on CPUs.
    """
    if ray.is_initialized():
        return ray.cluster_resources().get("GPU", 0) > 0
    return torch.cuda.is_available()
