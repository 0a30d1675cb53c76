"""The operator's side of OTA: ``fleetctl ota`` (keys, bundles, the bundle server, rollouts)."""
