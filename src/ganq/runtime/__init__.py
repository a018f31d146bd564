"""ganq.runtime (torch-free)."""
