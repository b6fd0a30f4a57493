"""Many hosts on one PostgreSQL: leases, fencing, takeover, forwarding, placement.

Cluster mode is on when the engine's store supports leases (``PostgresStore``;
``AGENTVM_DB=postgresql://...``). Every ``agentvm serve`` process is a *host* with a
unique id (``AGENTVM_HOST_ID``; default ``<hostname>-<random>``, new per process) and
a URL the other hosts reach its HTTP server at (``AGENTVM_HOST_URL``; default the
address it listens on).

The lease protocol
------------------
- An awake actor is owned by exactly one host: a row of the ``leases`` table
  ``(actor_id, host_id, token, expires_at)``. All times are the database's clock, so
  host clock skew cannot make a lease look expired.
- A host *claims* an actor before it wakes or creates it (``acquire_lease``: one
  statement that takes the row when it is free, expired, held by a stopped host, or
  already ours). A lease that changes hands gets a new *fencing token* from a
  sequence; the host registers it with the store (``store.fence``).
- If another live host holds the lease, the claim raises :class:`NotOwner` naming
  that host and its URL: the HTTP server forwards the request there
  (``host/server/forward.py``), an in-process client re-sends the call over HTTP
  (``orchestrator.client.InProcessTransport``).
- Every ``ttl / 3`` seconds (``AGENTVM_LEASE_TTL``, default 10 s) each host's
  :class:`ClusterMember` heartbeats (its ``hosts`` row with its load: awake actors,
  running sandboxes, RSS) and renews every lease it holds in one statement.
- **Fencing**: each commit transaction locks the lease rows of the fenced actors it
  touches (``FOR SHARE``) and refuses a submission whose token is not the row's: the
  store raises :class:`LeaseLost` and applies none of it. A host that lost a lease
  therefore can never record a step of that actor again, whatever it still believes.
- A lease that was not renewed (another host took it after it expired) is *lost*:
  the member drops the actor's instance locally, without writing (its workflow and
  runs are cancelled in memory; waiters get ``LeaseLost``; event streams end).
- Each beat, a host claims up to :attr:`ClusterMember.claim_per_beat` *orphaned*
  actors (awake or with an alarm, whose lease is missing, expired or held by a
  stopped host), in random order so several live hosts share a dead host's actors,
  and wakes them: their workflows and runs resume from their history.
- Sleep releases the lease (a sleeping actor has no owner; the next request anywhere
  claims it) unless the actor sleeps with an alarm: then its host keeps the lease and
  the alarm timer (if that host dies the actor is orphaned and re-claimed).
- Destroy deletes the actor (fenced) and then releases the lease.
- A clean stop commits what is pending, then marks the host stopped and deletes its
  leases (``host_stopped``), so the others take its busy actors at their next beat
  instead of after the ttl.
- Schedules (``c.schedule.after``): every host arms every schedule row it knows (at
  start, for the actors it takes over, and every 30 beats for rows made since); only
  the owner fires one (a fire first claims the actor; ``NotOwner`` ends it), at most
  one fire per schedule is in flight on a host, and the row is read again after the
  claim, so a schedule the previous owner already fired is not fired twice.
- Affinity: callbacks in :attr:`ClusterMember.affinity` may name the host an actor
  belongs on before it is claimed (the vm manager: a vm whose container is on another
  live host's Docker engine belongs there); the claim then raises ``NotOwner``.
- A host remembers the owner a claim named for a third of the ttl (forwarded requests
  for a busy remote actor skip the lease query) and forgets it when it does not answer.

Failure cases
-------------
- *Host killed* (``kill -9``, machine lost): its leases expire after at most ``ttl``;
  the other hosts claim the orphans within a beat after that. A step that was
  running on the dead host re-runs on the new owner (steps are at-least-once, as on
  one host after a crash); a step whose result was committed never re-runs.
- *Host paused* (SIGSTOP, GC pause, network partition from the database): when it
  comes back its leases may belong to others. Its commits for those actors are
  refused (``LeaseLost``) and its next beat drops them. If it cannot renew for longer
  than ``ttl`` (database unreachable) it drops every actor it holds on its own.
  Note: a side effect outside the database made by a step that was already running
  when the lease moved can happen twice (the new owner re-runs the step); only the
  *recording* of steps is exactly-once.
- *Database down*: nothing commits anywhere; hosts keep retrying their beats, and a
  host that could not renew for a whole ttl drops its actors (others may own them).
- *Process restarted with the same* ``AGENTVM_HOST_ID``: it re-owns its old leases at
  once (same token). Two live processes must never share a host id: fencing cannot
  tell them apart. The default id is new per process, so a restart waits for the ttl.
- *A commit in flight when its host was killed* may still land in PostgreSQL after
  the kill: the next owner's claim updates the lease row, which waits for that
  commit (it holds the row ``FOR SHARE``), and a schedule is re-read after the claim.
- *A host frozen mid-commit*: a commit is one statement, which PostgreSQL finishes
  without the client, so its ``FOR SHARE`` row locks never outlive it and a takeover
  never waits for a frozen host.
- *Forwarding races*: a request forwarded to an owner that has just lost or released
  the actor meets ``NotOwner`` again; it is not forwarded a second time (no loops):
  the client gets ``503 cluster/owner_moving`` with ``Retry-After: 1``.

Placement
---------
An actor created by an HTTP request goes to the least-loaded live host (fewest
running sandboxes, then fewest awake actors, then lowest RSS): if that is another
host the request is forwarded there and the actor is created there. An actor created
by another actor's code (``ctx.client``, an in-process client) stays on its creator's
host, so an orchestrator and its vms stay together.
"""

from __future__ import annotations

from .context import forwarded_request, http_request, in_process
from .member import ClusterMember, OwnerMoving, default_cluster_host_id

__all__ = [
    "ClusterMember",
    "OwnerMoving",
    "default_cluster_host_id",
    "forwarded_request",
    "http_request",
    "in_process",
]
