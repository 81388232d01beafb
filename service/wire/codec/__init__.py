"""Wire codecs shared by the HTTP and gRPC front ends."""
