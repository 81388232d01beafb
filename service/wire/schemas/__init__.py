"""Wire schemas, kept apart from the routes that use them."""
