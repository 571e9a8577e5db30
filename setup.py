"""The optional native UDP hit loop (resolver/serve/_hitloop.c); everything else is in pyproject.toml.

Linux only (recvmmsg/sendmmsg).  ``optional=True``: without a compiler or Python
headers the build goes on without it, and the server runs the Python hit path
(resolver/serve/batch.py says which one is active, in a log line and a metric).
"""

import sys

from setuptools import Extension, setup

ext_modules = []
if sys.platform.startswith("linux"):
    ext_modules.append(Extension("resolver.serve._hitloop", ["resolver/serve/_hitloop.c"],
                                 extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                                                     "-Wno-missing-field-initializers"],
                                 libraries=["m"], optional=True))

setup(ext_modules=ext_modules)
