"""Start, stop and health-check the embedded local stack (``make up`` / ``make down`` / ``make status``)."""
