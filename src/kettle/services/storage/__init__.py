"""The storage service's core: namespaced records and durable queues, sealed at rest."""
