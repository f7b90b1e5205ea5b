"""Tools around the product that are not its runtime: the synthetic traffic and replay (``tools.traffic``), the
local stack and standalone-cluster control (``tools.stack``) and the end-to-end acceptance run (``tools.e2e``).
The runtime (``lakehouse`` and the stage packages) imports none of them."""
