"""Where a deploy runs: here, or on a board reached with the user's own OpenSSH client."""
