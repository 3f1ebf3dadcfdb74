"""Plain training steps and the one best-checkpoint rule."""
