"""Typed exceptions, so that each boundary can say whose fault a failure was.

Remote faults (an upstream that times out or answers garbage) trigger serve-stale;
local faults (bad configuration) stop the process before it serves anything; client
faults (a malformed query) become FORMERR.  Broad ``except`` clauses live only at
the listener and in background tasks.
"""


class ResolverError(Exception):
    """Base class for every error this package raises on purpose."""


class ConfigError(ResolverError):
    """The configuration is unusable.  ``key`` is the dotted path of the offending key."""

    def __init__(self, key: str, problem: str):
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}" if key else problem)


class FormatError(ResolverError):
    """A client query could not be parsed (RFC 1035 FORMERR).

    ``question_end`` is set when the header and question were readable, so the
    error reply can echo the question; ``rcode`` lets the parser ask for NOTIMP or
    BADVERS instead of FORMERR (or REFUSED for a question we do not serve).
    """

    def __init__(self, reason: str, rcode: int = 1, question_end: int = 0, edns: bool = False):
        self.reason = reason
        self.rcode = rcode
        self.question_end = question_end
        self.edns = edns  # the query had an OPT record: the reply carries one too (RFC 6891 §7)
        super().__init__(reason)


class DropQuery(ResolverError):
    """The datagram is not worth answering (no readable header, or QR=1)."""


class UpstreamError(ResolverError):
    """An upstream exchange failed; ``reason`` is a fixed metric label."""

    reason = "error"


class UpstreamTimeout(UpstreamError):
    reason = "timeout"


class UpstreamUnreachable(UpstreamError):
    reason = "unreachable"


class UpstreamBadResponse(UpstreamError):
    reason = "bad_response"


class UpstreamServfail(UpstreamError):
    """The upstream answered, but with SERVFAIL / REFUSED / another failure rcode."""

    def __init__(self, reason: str, message: str = ""):
        self.reason = reason  # "servfail", "refused" or "rcode"
        super().__init__(message or reason)
