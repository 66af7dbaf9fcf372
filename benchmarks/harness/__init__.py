"""The on-device benchmark harness: standard library, numpy and a TFLite runtime only."""
