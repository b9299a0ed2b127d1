"""The HTTP surface: Twirp services, health and CORS. Thin: decode, authorise, call core, encode."""
