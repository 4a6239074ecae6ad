"""Apps to run on ringserve (``python -m server --app examples.<module>:app``).

- ``asgi_hello``: a raw ASGI 3 app with the built-in app's ``GET /`` and
  ``POST /echo``, byte for byte;
- ``fastapi_app``: a small FastAPI app (path and query parameters, a pydantic
  body, a streamed response, lifespan state), ``pip install -e '.[fastapi]'``.

The README's "Running an ASGI app" shows them; ``loadtest.compare --app asgi``
and ``--app fastapi`` benchmark them on our servers and on the peers.
"""
