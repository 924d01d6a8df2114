"""Stage 0: manifests, dataset adapters, image decoding and the phantom generator."""
