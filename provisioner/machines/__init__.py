"""Machines: a Machine is config.json plus its driver; create/start/provision/rm as named steps, and batches."""
