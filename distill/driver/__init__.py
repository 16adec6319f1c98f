"""The stages a command runs in its own process: checks, Ray resources, data, served teachers, scores, report."""
