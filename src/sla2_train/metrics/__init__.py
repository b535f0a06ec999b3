"""Quality metrics: SLA2 against full attention, per layer and on generated latents."""

from .attention_error import relative_l1
from .image_quality import video_psnr, video_ssim

__all__ = ["relative_l1", "video_psnr", "video_ssim"]
