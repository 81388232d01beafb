"""HTTP front end: the app and its lifespan, the connection protocol, middleware, routes."""
