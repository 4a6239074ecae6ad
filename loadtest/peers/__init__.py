"""Peer servers measured beside ringserve's backends by ``loadtest.compare --peers``.

- ``uvloop_h11``: our own ``HttpConnection`` (h11) and built-in app inside an
  ``asyncio.Protocol`` on uvloop, so the only difference from our backends is
  the event loop doing the I/O;
- ``uvloop_echo``: an ``asyncio.Protocol`` echo on uvloop;
- ``wsgi_app``: the hello of ``examples/asgi_hello.py`` (what uvicorn and
  granian serve, and ours with ``compare --app asgi``) as a WSGI app, for
  ``granian --interface wsgi`` and, with ``compare --app wsgi``, for ours and
  ``uvloop_h11 --app``;
- ``uring_echo.c``: a minimal C liburing echo server (multishot accept,
  multishot recv into a buffer ring, DEFER_TASKRUN), built with the compiler at
  benchmark time: as close to the kernel's limit as a user-space server gets.
"""
