"""sla2-train: SLA2 sparse-linear attention for video diffusion transformers."""

__version__ = "0.1.0"
