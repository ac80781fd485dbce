"""Cloud drivers built on Apache libcloud: a shared base and one small module per provider."""
