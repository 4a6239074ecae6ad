"""Applications served by the HTTP protocol: the built-in one and WSGI."""
