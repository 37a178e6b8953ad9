"""Vision: safe photo decoding (no TensorFlow) and the MobileNetV2 backbone (TensorFlow, loaded lazily)."""
