"""Helpers shared by the tests (and the benchmark): input generators and server processes."""
