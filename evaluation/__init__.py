"""Measuring a running server on real and generated uploads, through its HTTP API."""
