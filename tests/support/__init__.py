"""What the tests share; test modules import helpers from here only, never from each other.

* ``client``         asking a forwarder as a client would: ``ask`` (UDP/TCP), ``dig``, raw datagrams,
                     TCP framing, ``eventually``, TTL and EDE readers.
* ``forwarder``      the App in-process on real loopback sockets with a FakeClock (``advance()``).
* ``fake_upstream``  an in-process, fault-injecting upstream that refuses like a real server.
* ``unbound``        a real Unbound serving the zone ``test.``; ``DEFAULT_RECORDS``, ``free_port``.
* ``packets``        queries, replies and cache entries built with dnslib, not with the code under test.
* ``pipeline``       the pipeline without sockets (scripted ``FakePool`` from ``fake_pool``).
* ``process``        the command as a real process: start, wait, files, metrics.
* ``load``, ``netns`` client load; a network namespace with kernel faults.
* ``image``, ``dockerfile``, ``container_sandbox``  the container image without a container engine.

Every server here binds to 127.0.0.1 only.
"""
