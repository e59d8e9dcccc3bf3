"""Running several processes of one role: locks that only one process at a time holds (the scheduler's leader, an
ingest member's MQTT sessions), and the leader election built on them."""
