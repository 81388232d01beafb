"""Wire shapes shared by the front ends: bounded JSON, request/response schemas, V2 codecs."""
