"""Feedback: every answer kept with its request id, the truth it is given, live quality."""
