"""The video model: autoencoder, STDiT, rectified-flow sampler, and the VideoModel that bundles them.

rectified_flow imports nothing from the networks; video_model imports the other three.
"""

from kdcvg.models.autoencoder import AutoencoderConfig, VideoAutoencoder
from kdcvg.models.stdit import STDiT, STDiTConfig
from kdcvg.models.video_model import ModelLoadError, VideoModel

__all__ = ["AutoencoderConfig", "ModelLoadError", "STDiT", "STDiTConfig", "VideoAutoencoder", "VideoModel"]
