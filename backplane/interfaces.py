"""
Interfaces of the backplane: what a stream subscriber must provide.
"""

from zope.interface import Interface


class ILineSink(Interface):
    """
    A subscriber that takes lines in bulk: the fast path of the fan-out.

    A network subscriber writes what it is handed straight to its transport, so a
    chunk of many lines costs one call and one write, not one per line.
    """

    def deliver(data: bytes, count: int) -> None:
        """
        Take C{count} complete messages, each followed by C{b"\\n"}.

        C{data} is never empty, always ends with C{b"\\n"} and holds exactly
        C{count} of them; a sink may forward it unchanged. It must not block and
        should not raise: an exception is logged and the sink stays subscribed.
        """

