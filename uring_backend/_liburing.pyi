# The compiled cffi module. Its functions take and return cdata, which is
# only ever handled inside ring.py, so it is typed as Any at this boundary.
from typing import Any

ffi: Any
lib: Any
