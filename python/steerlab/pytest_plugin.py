"""steerlab's pytest plugin (being written: issue 14)."""
