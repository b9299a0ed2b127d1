"""Access tokens and grants: minting, verifying, and the permission checks of every entry point."""
