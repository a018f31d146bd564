"""ganq.report (torch-free)."""
