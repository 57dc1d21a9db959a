"""Text side of the server: the ONNX Runtime sentence encoder, its asyncio micro-batcher, the atomizer."""
