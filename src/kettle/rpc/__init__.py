"""gRPC plumbing: generated stubs, attested servers and channels, interceptors."""
