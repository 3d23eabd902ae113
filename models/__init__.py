"""The original suite's `models/` package: `from models import create_wide_residual_network` and
`import models.wide_residual_net` work as before. The networks live in snapshot_ensembles.models.
"""

from snapshot_ensembles.models import create_dense_net, create_resnet, create_wide_residual_network

__all__ = ["create_dense_net", "create_resnet", "create_wide_residual_network"]
