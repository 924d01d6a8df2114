"""Stage one: backbone registry and forward step, the HDF5 embedding cache (its sole owner), the extract driver."""
