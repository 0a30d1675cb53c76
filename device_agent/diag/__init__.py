"""Remote diagnostics: log pulls, self-tests, snapshots, network checks and live looks over MQTT."""
