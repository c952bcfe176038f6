"""The gRPC transport: servicers, proto <-> service types, status codes and metadata."""
