"""Safe loading of users' checkpoints and data: nothing a user sends is ever executed."""
