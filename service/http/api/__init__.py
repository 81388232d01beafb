"""HTTP routes: thin protocol adapters over the DataPlane."""
