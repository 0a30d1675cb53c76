"""On-device streaming noise suppression (our own TFLite model)."""
