"""Calibration: token data (``data``), the layer-wise engine and the routed-token observer."""
