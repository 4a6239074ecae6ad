"""ringserve: a single-threaded TCP server with io_uring and epoll backends."""

__version__ = "0.1.0"
