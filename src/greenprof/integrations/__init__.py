"""greenprof with the tools around it (SkyWalking profile tasks, ...)."""
