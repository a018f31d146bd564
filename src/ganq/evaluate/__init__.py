"""ganq.evaluate (torch-free)."""
