"""Storage URIs, audio files and decoding: bytes in and out, no music knowledge."""
