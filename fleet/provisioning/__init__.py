"""Fleet side of provisioning: CA, claims registry, claim responder, broker configuration."""
