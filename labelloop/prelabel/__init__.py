"""Pre-labeling: backends that turn items into predictions, and the runner that stores them."""
