"""How a worker reaches the shards: one contract, three transports, each client beside its server.

- ``Transport``, ``TransportSpec``, ``Served``, ``Pending`` (contract.py): what every transport
  promises the worker, and what every server calls on the shard; a contract suite checks each.
- ``ShardClientBase`` (client_base.py): what the clients share (a step as one Step per shard).
- ``refusal`` (statuses.py): one table from the shard's errors to the status a server answers.
- ``RayTransport``, ``ShardClient`` (object_store.py): Ray actor calls.
- ``GrpcEndpoints``, ``GrpcShardClient`` (grpc_client.py) and ``ShardServicer``
  (grpc_server.py): protos/ps.proto over one Step stream per shard;
  ``TokenAuth``, ``TLSConfig``, ``GrpcConfig`` (grpc_security.py); ``JobAuthority``, each
  multi-node job's own CA, and ``TLSKeys`` (job_ca.py).
- ``ShmEndpoints``, ``ShmShardClient`` (shm_client.py) and ``ShmShardServer``
  (shm_server.py): same-node shared memory and a Unix socket.
- ``keep_freed_memory`` (allocator.py): malloc settings for streaming processes.
"""
