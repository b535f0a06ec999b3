"""sla2-train's Hydra launchers (found by Hydra's plugin scan of the hydra_plugins namespace).

An editable install (`pip install -e .`, what scripts/install.sh does) exposes src/ through an import hook
that Hydra's scan cannot list, so the entry points also register the launchers explicitly.
"""


def register_launchers() -> None:
    """Make hydra/launcher=slurm and slurm_local known to Hydra however the package was installed."""
    from hydra.core.plugins import Plugins

    from . import torchrun_launcher

    for name in ("TorchrunSlurmLauncher", "TorchrunLocalLauncher"):
        launcher = getattr(torchrun_launcher, name, None)  # absent without the optional `slurm` extra
        if launcher is not None:
            Plugins.instance().register(launcher)
