"""Domain errors. The API layer maps each to its protocol's error code; core never formats a response."""


class CoreError(Exception):
    """A request that the rules refuse; the message is safe to show to the caller."""


class InvalidArgument(CoreError):
    pass


class NotFound(CoreError):
    pass


class ResourceExhausted(CoreError):
    pass


class Unavailable(CoreError):
    pass


class FailedPrecondition(CoreError):
    """Refused because of the state of things, not the request's form (e.g. a token for an ended job)."""
