"""Video bytes in and out (H.264 MP4 via PyAV) and keyframe selection on decoded frames."""

from kdcvg.media.keyframes import foreground_masks, motion_segment, product_boxes, select_keyframes
from kdcvg.media.video import DecodedVideo, VideoDecodeError, decode_video, encode_mp4

__all__ = [
    "DecodedVideo",
    "VideoDecodeError",
    "decode_video",
    "encode_mp4",
    "foreground_masks",
    "motion_segment",
    "product_boxes",
    "select_keyframes",
]
