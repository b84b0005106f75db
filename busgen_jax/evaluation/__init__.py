"""Evaluation: clinical statistics, reader studies, MRMC analysis and figures."""
