"""Several nodes sharing one deployment through Redis: node registry, room placement, and their leases.

Without a `redis:` section none of this runs and a node serves alone, as before. docs/cluster.md says what
each Redis key holds and the delivery guarantee of every cross-node message."""
