"""The vm actor: one key = one hardened sandbox container.

Wiring::

    manager = await SandboxManager.open(host_id="h1", pool_size=2)
    engine = Engine(setup(use={"vm": vm_actor(manager)}), db=...)
    await engine.start()
    manager.attach(engine)  # the orphan reaper reads owners from this engine's store
    ...
    await engine.stop()     # vms are left running for the next start to adopt
    await manager.close()
"""

from .actor import sandbox_of, vm_actor
from .manager import SandboxManager, SandboxRecord
from .options import VmOptions, parse_options

__all__ = [
    "SandboxManager",
    "SandboxRecord",
    "VmOptions",
    "parse_options",
    "sandbox_of",
    "vm_actor",
]
