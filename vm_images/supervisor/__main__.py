"""``python3 -m agentvm_supervisor`` inside the sandbox (``vm_images.supervisor`` on the host)."""

from .main import main

main()
