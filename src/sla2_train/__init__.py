"""sla2-train: SLA2 sparse-linear attention for video diffusion transformers."""

__version__ = "0.1.0"

__all__ = ["install_sla2"]


def __getattr__(name: str):
    # Lazy: `import sla2_train.attention` should not pay for importing diffusers.
    if name == "install_sla2":
        from .export import install_sla2

        return install_sla2
    raise AttributeError(f"module 'sla2_train' has no attribute {name!r}")
