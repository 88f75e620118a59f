"""Process groups, collectives and the byte ledger behind ``engine.comm_stats()``."""
from zerolib.comm.context import CommContext, PendingCollective, init_distributed
from zerolib.comm.failures import CollectiveError
from zerolib.comm.ledger import COLLECTIVE_KINDS, CommLedger, wire_bytes

__all__ = ["CommContext", "CommLedger", "CollectiveError", "PendingCollective", "init_distributed", "wire_bytes",
           "COLLECTIVE_KINDS"]
