"""The change feed relayed to NATS JetStream, for consumers in any language.

`subjects` owns the layout on the NATS side (subjects, message ids, headers, the stream);
`relay` follows a workspace's feed over gRPC and publishes it there. Neither imports the
server's modules: the relay is a client of segsvc like any other.
"""
