"""Several brokers on one PostgreSQL database: which broker schedules which pool.

Each pool is scheduled by one broker at a time, which holds a lease on it in the
database (table pool_leases) with a fencing epoch that every one of its commits carries
(broker.storage.postgres). The design, with its failure cases, is in deploy/cluster.md.
"""

from broker.cluster.assignment import desired_owner
from broker.cluster.node import ClusterNode, LeaseLost

__all__ = ["ClusterNode", "LeaseLost", "desired_owner"]
