"""How a worker reaches the shards: one contract, three transports, client beside server.

- ``Transport``, ``TransportSpec``, ``Pending`` (contract.py): what every
  transport promises the worker; a contract suite checks each one.
- ``RayTransport``, ``ShardClient`` (object_store.py): Ray actor calls.
- ``GrpcEndpoints``, ``GrpcShardClient`` (grpc_client.py) and ``ShardServicer``
  (grpc_server.py): protos/ps.proto over one Step stream per shard;
  ``TokenAuth``, ``TLSConfig``, ``GrpcConfig`` (grpc_security.py).
- ``ShmEndpoints``, ``ShmShardClient`` (shm_client.py) and ``ShmShardServer``
  (shm_server.py): same-node shared memory and a Unix socket.
- ``keep_freed_memory`` (allocator.py): malloc settings for streaming processes.
"""
