"""Export trained NiN models to quantized TFLite and verify them with LiteRT."""
