"""The gRPC layer, the only package besides segsvc.v1 that imports grpc.

server.py      create_server / serve: services, interceptors, health, reflection, signals
errors.py      the interceptor that turns domain errors into status codes
auth.py        bearer tokens, roles and the workspace of each call
convert.py     protobuf <-> engine values (batches.py: per-item results of batch calls)
people.py, segments.py, changes.py, audiences.py   one thin servicer per service
csv_import.py  the incremental CSV reader behind ImportMembers
"""
