"""Panel integrations: the server as a node of a user-management panel (Xboard)."""
