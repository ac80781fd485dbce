"""The classic image builder (POST /build): Dockerfile parsing, .dockerignore, build context, steps, cache."""
