"""
The twistd dropin: C{twistd backplane}.  Importing it is cheap; the work is
in L{backplane.tap}.
"""

from twisted.application.service import ServiceMaker

backplane = ServiceMaker(
    "backplane",
    "backplane.tap",
    "Distribute lines of data through named backplanes (Kamaelia's Backplane on Twisted).",
    "backplane",
)
