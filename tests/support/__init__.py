"""DNS servers started by the integration tests; every one binds to 127.0.0.1 only.

* :class:`UnboundServer` - a real Unbound process serving a static ``test.`` zone.
* :class:`FakeUpstream` - an in-process, fault-injecting DNS upstream.
"""

from .fake_upstream import FakeUpstream
from .unbound import UnboundServer, find_unbound, free_port

__all__ = ["FakeUpstream", "UnboundServer", "find_unbound", "free_port"]
