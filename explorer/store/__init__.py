"""The trajectory store: the database, the (position x step) arrays and the run bundles."""
