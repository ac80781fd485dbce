"""Machine drivers: one module per driver behind one small interface (drivers.base)."""
