"""HTTP layer of the engine: routing (with and without /vX.YY) and one module per resource."""
