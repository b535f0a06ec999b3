"""Hydra's submitit launchers (SLURM and local), with torchrun's environment in every task.

submitit starts `tasks_per_node` processes on each of `nodes` nodes (srun on SLURM, subprocesses locally) and
runs the Hydra job in each. Before the job starts, each task gets the variables torchrun would have set for
it, so Lightning, torch.distributed and the data loaders see what `torchrun --nnodes=N --nproc_per_node=G
train.py ...` gives them: Lightning takes its torchrun path (it never re-launches the script, which would break
Hydra's output folders), and the trainer presets documented for torchrun (trainer=ddp, fsdp, ddp_cpu) apply
unchanged. Hydra only loads launchers from the hydra_plugins namespace, hence this package's place.
"""

from __future__ import annotations

import os
from importlib.util import find_spec
from typing import Any


def torchrun_environment() -> dict[str, str]:
    """torchrun's variables for the current submitit task. The master is the job's first node and the port
    derives from the job id, so all tasks of a job agree on both and the jobs of an array do not collide."""
    import submitit

    dist = submitit.helpers.TorchDistributedEnvironment()
    job = submitit.JobEnvironment()
    return {
        "MASTER_ADDR": dist.master_addr,
        "MASTER_PORT": str(dist.master_port),
        "RANK": str(dist.rank),
        "WORLD_SIZE": str(dist.world_size),
        "LOCAL_RANK": str(dist.local_rank),
        "LOCAL_WORLD_SIZE": str(dist.local_world_size),
        "GROUP_RANK": str(job.node),
        "ROLE_RANK": str(dist.rank),
        "ROLE_WORLD_SIZE": str(dist.world_size),
        # torch (is_torchelastic_launched) and Lightning recognise a torchrun process by this variable.
        "TORCHELASTIC_RUN_ID": str(job.job_id),
    }


# Without the optional `slurm` extra there is nothing to extend, and Hydra's plugin scan must not fail.
if find_spec("hydra_plugins.hydra_submitit_launcher") is not None:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher, SlurmLauncher

    class TorchrunSlurmLauncher(SlurmLauncher):
        """hydra/launcher=slurm: one SLURM job per sweep point, one task per GPU."""

        def __call__(self, *args: Any, **kwargs: Any):
            os.environ.update(torchrun_environment())
            return super().__call__(*args, **kwargs)

    class TorchrunLocalLauncher(LocalLauncher):
        """hydra/launcher=slurm_local: the same task layout as processes on this machine (one node)."""

        def __call__(self, *args: Any, **kwargs: Any):
            os.environ.update(torchrun_environment())
            return super().__call__(*args, **kwargs)
