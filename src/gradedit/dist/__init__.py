"""Data parallelism over ``torch.distributed`` (``torchrun`` / ``accelerate launch``), no own engine.

```python
from gradedit import dist
dist.init()                          # joins the launcher's group once; False in a single process
mine = dist.shard(texts)             # this rank's contiguous block
total = dist.all_reduce_sum(t)       # sum over ranks
if dist.is_main(): ...               # rank 0 writes and reports
```

In a single process no group is created and every helper is a no-op (rank 0 of 1). The gradient
store, the decomposition and the blast radius call :func:`init` themselves; see docs/scaling.md.
"""

from .group import (
    BACKEND_ENV,
    TIMEOUT_ENV,
    DistEnv,
    backend,
    barrier,
    comm_device,
    detect,
    init,
    is_distributed,
    is_main,
    local_rank,
    quiet,
    rank,
    world_size,
)
from .launch import free_port, launch_local, main_first, on_main
from .ops import (
    all_gather_json,
    all_gather_rows,
    all_reduce_sum,
    average_gradients,
    broadcast_json,
    broadcast_tensors,
    check_all_ok,
    main_decides,
    shard,
    shard_range,
    sum_with_grad,
)

__all__ = ["BACKEND_ENV", "TIMEOUT_ENV", "DistEnv", "all_gather_json", "all_gather_rows", "all_reduce_sum", "average_gradients", "backend",
           "barrier", "broadcast_json", "broadcast_tensors", "check_all_ok", "comm_device", "detect", "free_port",
           "init", "is_distributed", "is_main", "launch_local", "local_rank", "main_decides", "main_first", "on_main",
           "quiet", "rank", "shard", "shard_range", "sum_with_grad", "world_size"]
