"""Generic gRPC plumbing: error mapping, request helpers, server bootstrap."""
