"""Deploy and benchmark on devices: the transport protocol, SSH and local transports."""
