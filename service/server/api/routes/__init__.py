"""The HTTP routes: v1 losses, the Open Inference Protocol v2, delayed labels, health, metrics, pages."""
